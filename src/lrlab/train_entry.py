"""The Hydra entry point behind `lrlab train` (run dirs, multirun, every Hydra flag).

The task function returns the run's objective (`objective.metric`'s final value, see
`lrlab.objective`), so any Hydra sweeper can optimise it. A single run that fails exits at once
(2: bad input or the file system, 1: training failed). In a multirun a failing job is recorded
(its summary says "failed" and why; `FAILED` maps its number to the reason and its overrides
for the one-line summary the CLI prints at the end) and returns the worst value, so the sweep
goes on; with `objective.on_failure=raise` it raises for sweepers that handle failed jobs.
Under the `parallel` launcher each job runs with its share of the cores.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lrlab import conf_dir, objective, parallel
from lrlab.errors import ConfigError
from lrlab.train import TrainingFailed, run

FAILED: dict[int, tuple[str, list[str]]] = {}


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


def launcher_threads(hydra_cfg: DictConfig) -> int | None:
    """Each job's share of the cores when the launcher runs several jobs at once (joblib)."""
    launcher = hydra_cfg.hydra.launcher
    if "joblib" not in str(launcher.get("_target_", "")).lower():
        return None
    return parallel.share(parallel.joblib_jobs(int(launcher.get("n_jobs") or -1)))


def train(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.instance().cfg
    multirun = hydra_cfg.hydra.mode == RunMode.MULTIRUN
    if cfg.get("threads") is None and launcher_threads(hydra_cfg):
        cfg.threads = launcher_threads(hydra_cfg)  # recorded in config.yaml; `run` applies it
    goal = cfg.objective
    try:
        summary = run(cfg, hydra_cfg)
    except (ConfigError, TrainingFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        if not multirun:
            sys.exit(err.exit_code if isinstance(err, TrainingFailed) else 2)
        FAILED[int(hydra_cfg.hydra.job.num)] = (str(err), list(OmegaConf.to_container(hydra_cfg.hydra.overrides.task)))
        if goal.on_failure == "raise":
            raise
        return objective.worst(goal.mode)
    if summary is None:  # a DDP rank other than 0
        return None
    print_summary(summary, str(cfg.paths.run_dir))
    problem = objective.missing(summary, goal.metric)
    if problem and multirun:
        print(f"warning: {problem}; the job returns the worst value", file=sys.stderr)
    return objective.value(summary, goal.metric, goal.mode)


hydra_main = hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="train")(train)


if __name__ == "__main__":
    from lrlab.console import quiet_libraries

    quiet_libraries()
    hydra_main()
