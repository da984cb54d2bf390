"""The run summary: `summary.json` in the run dir, written on completion, failure or interrupt.

Keys (exactly): status, metrics, optimizer_state_bytes, optimizer_state_bytes_by_group,
trainable_params, total_params, peak_memory_bytes, throughput, wall_seconds, steps, seed,
config_hash, git_sha, versions. `metrics` holds `final` and `best` validation values by name.
"""

import json
import math
import os
import platform
import time
from pathlib import Path

import hydra
import lightning as L
import torch

from lrlab.optim.routing import state_bytes

LOWER_IS_BETTER = ("loss", "ppl", "nll", "ece")


def _better(name: str, new: float, old: float) -> bool:
    return new < old if any(k in name for k in LOWER_IS_BETTER) else new > old


class RunSummary(L.Callback):
    """Tracks final and best validation metrics; `write()` assembles and saves the summary."""

    def __init__(self):
        self.final: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.extra: dict[str, float] = {}
        self.started = time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        for name, value in trainer.callback_metrics.items():
            if not name.startswith("val/"):
                if not name.startswith("train/"):
                    self.extra[name] = float(value)
                continue
            value = float(value)
            self.final[name] = value
            if math.isfinite(value) and (name not in self.best or _better(name, value, self.best[name])):
                self.best[name] = value

    def state_dict(self) -> dict:
        return {"best": dict(self.best), "final": dict(self.final)}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.final = dict(state["best"]), dict(state["final"])

    def build(self, trainer, task, status: str, run: dict, throughput: dict, peak_bytes: int) -> dict:
        optimizers = trainer.optimizers if trainer is not None else []
        total_state, by_group = state_bytes(optimizers[0]) if optimizers else (0, [])
        params = list(task.model.parameters())
        metrics = {"final": self.final, "best": self.best}
        if self.extra:
            metrics["other"] = self.extra
        return {
            "status": status,
            "metrics": metrics,
            "optimizer_state_bytes": int(total_state),
            "optimizer_state_bytes_by_group": [int(b) for b in by_group],
            "trainable_params": int(sum(p.numel() for p in params if p.requires_grad)),
            "total_params": int(sum(p.numel() for p in params)),
            "peak_memory_bytes": int(peak_bytes),
            "throughput": throughput,
            "wall_seconds": round(time.perf_counter() - self.started, 3),
            "steps": int(trainer.global_step) if trainer is not None else 0,
            "seed": run["seed"],
            "config_hash": run["config_hash"],
            "git_sha": run["git_sha"],
            "versions": versions(),
        }


def versions() -> dict:
    return {"torch": torch.__version__, "lightning": L.__version__, "hydra": hydra.__version__,
            "python": platform.python_version()}


def write(summary: dict, run_dir: Path) -> Path:
    path = Path(run_dir) / "summary.json"
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path
