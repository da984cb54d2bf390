"""The run summary: `summary.json` in the run dir, written on completion, failure or interrupt.

Keys (exactly): status (completed, failed, interrupted, or pruned by a sweep), error, metrics, optimizer_state_bytes, optimizer_state_bytes_by_group,
trainable_params, total_params, peak_memory_bytes, throughput, wall_seconds, steps, seed,
config_hash, git_sha, versions. `metrics` holds `final` and `best` validation values by name;
`error` is null, or one line saying why the run failed. Metrics and wall time are checkpointed,
so a resumed run reports all its segments. The file is replaced atomically.
"""

import json
import math
import platform
import time
from pathlib import Path

import hydra
import lightning as L
import torch

from lrlab.errors import ConfigError
from lrlab.optim.state import state_bytes
from lrlab.rundir import write_text

LOWER_IS_BETTER = ("loss", "ppl", "nll", "ece")


def _better(name: str, new: float, old: float) -> bool:
    return new < old if any(k in name for k in LOWER_IS_BETTER) else new > old


class RunStopped(Exception):
    """Raised by a callback to end a run early under a status of its own (`pruned` by a sweep's
    pruner); the summary records the status and the reason, and the run ends normally."""

    def __init__(self, status: str, reason: str):
        self.status = status
        super().__init__(reason)


class RunSummary(L.Callback):
    """Tracks final and best validation metrics and writes `summary.json` from the rank-0
    training process (so spawned DDP workers report their own steps and state)."""

    def __init__(self, run_dir: str, run_info: dict, throughput, memory, interrupt):
        self.run_dir, self.run_info = Path(run_dir), run_info
        self.throughput, self.memory, self.interrupt = throughput, memory, interrupt
        self.final: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.extra: dict[str, float] = {}
        self.started = time.perf_counter()
        self.earlier_seconds = 0.0  # wall time of the segments before a resume

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for name, value in trainer.callback_metrics.items():
            value = float(value)
            if name.startswith("val/"):
                self.final[name] = value
                if math.isfinite(value) and (name not in self.best or _better(name, value, self.best[name])):
                    self.best[name] = value
            elif not name.startswith("train/"):
                self.extra[name] = value

    def wall_seconds(self) -> float:
        return self.earlier_seconds + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        return {"best": dict(self.best), "final": dict(self.final), "wall_seconds": self.wall_seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.final = dict(state["best"]), dict(state["final"])
        self.earlier_seconds = float(state.get("wall_seconds", 0.0))

    def on_fit_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module, "interrupted" if self.interrupt.requested else "completed")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, ConfigError):  # bad input found late: no run happened
            return
        if isinstance(exception, RunStopped):
            self.write(trainer, pl_module, exception.status, str(exception))
            return
        if isinstance(exception, (KeyboardInterrupt, SystemExit)):
            self.write(trainer, pl_module, "interrupted")
            return
        try:  # a full disk must not hide the error that stopped the run
            self.write(trainer, pl_module, "failed", str(exception).strip().splitlines()[0] if str(exception).strip()
                       else type(exception).__name__)
        except OSError:
            pass

    def write(self, trainer, pl_module, status: str, error: str | None = None) -> None:
        if trainer.is_global_zero:
            write(self.build(trainer, pl_module, status, error), self.run_dir)

    def build(self, trainer, task, status: str, error: str | None = None) -> dict:
        total_state, by_group = state_bytes(trainer.optimizers[0]) if trainer.optimizers else (0, [])
        params = list(task.model.parameters())
        rate = self.throughput.result()
        metrics = {"final": self.final, "best": self.best, "other": {**self.extra, "step_ms": rate.pop("step_ms")}}
        return {
            "status": status,
            "error": error,
            "metrics": metrics,
            "optimizer_state_bytes": int(total_state),
            "optimizer_state_bytes_by_group": [int(b) for b in by_group],
            "trainable_params": task.trainable_params(),
            "total_params": int(sum(p.numel() for p in params)),
            "peak_memory_bytes": int(self.memory.measure(task.device)),
            "throughput": rate,
            "wall_seconds": round(self.wall_seconds(), 3),
            "steps": int(trainer.global_step),
            "seed": self.run_info["seed"],
            "config_hash": self.run_info["config_hash"],
            "git_sha": self.run_info["git_sha"],
            "versions": versions(),
        }


KEYS = ("status", "error", "metrics", "optimizer_state_bytes", "optimizer_state_bytes_by_group", "trainable_params",
        "total_params", "peak_memory_bytes", "throughput", "wall_seconds", "steps", "seed", "config_hash", "git_sha",
        "versions")  # what `summary.json` holds (the module docstring says what each is)


def versions() -> dict:
    return {"torch": torch.__version__, "lightning": L.__version__, "hydra": hydra.__version__,
            "python": platform.python_version()}


def read(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def write(summary: dict, run_dir: Path) -> Path:
    path = Path(run_dir) / "summary.json"
    write_text(path, json.dumps(summary, indent=2, sort_keys=False) + "\n")
    return path
