"""The Hydra entry point behind `lrlab train` (gives run dirs and multirun).

A single run that fails exits at once (2: bad input or the file system, 1: training failed).
In a multirun grid a failing job is recorded (its summary says "failed" and why) and the grid
goes on; `FAILED` collects (job number, reason) for the one-line summary the CLI prints at the
end.
"""

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lrlab import conf_dir
from lrlab.errors import ConfigError
from lrlab.train import TrainingFailed, run

FAILED: list[tuple[int, str]] = []


def print_summary(summary: dict, run_dir: str) -> None:
    rows = [("status", summary["status"]), ("steps", summary["steps"])]
    rows += [(f"final {k}", f"{v:.4g}") for k, v in summary["metrics"]["final"].items()]
    rows += [(f"best {k}", f"{v:.4g}") for k, v in summary["metrics"]["best"].items()]
    rows += [(k.replace("_", " "), f"{v:,.0f}") for k, v in summary["throughput"].items()]
    rows += [("optimizer state", f"{summary['optimizer_state_bytes'] / 2**20:.2f} MiB"),
             ("peak memory", f"{summary['peak_memory_bytes'] / 2**20:.0f} MiB"),
             ("trainable params", f"{summary['trainable_params']:,}"),
             ("wall time", f"{summary['wall_seconds']:.1f} s"), ("run dir", run_dir)]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")
def hydra_main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.instance().cfg
    try:
        summary = run(cfg, hydra_cfg)
    except (ConfigError, TrainingFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        if hydra_cfg.hydra.mode == RunMode.MULTIRUN:
            FAILED.append((int(hydra_cfg.hydra.job.num), str(err)))
            return
        sys.exit(err.exit_code if isinstance(err, TrainingFailed) else 2)
    if summary is not None:
        print_summary(summary, str(cfg.paths.run_dir))


def check_torchrun_run_name(argv: list[str]) -> None:
    """torchrun starts each rank on its own clock, so `run_name`'s default (the time) could give
    each rank its own run dir: under torchrun the run must be named."""
    named = any(arg.startswith(("run_name=", "hydra.run.dir=")) for arg in argv)
    if os.environ.get("TORCHELASTIC_RUN_ID") and not named:
        print("error: run_name=(the time): under torchrun every rank must write the same run dir: pass run_name=NAME",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from lrlab.console import quiet_libraries

    check_torchrun_run_name(sys.argv[1:])
    quiet_libraries()
    hydra_main()
