"""compose → instantiate → fit → summary. Nothing method-specific lives here.

`run(cfg)` is the whole job: tests call it on a config from `compose(overrides)`, the CLI
calls it through `hydra.main` (run dirs, multirun). Bad input raises `ConfigError` before
anything is written; a run dir created by a failed start is removed again.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from lrlab import conf_dir, resolvers  # noqa: F401  (registers ${mul:...})
from lrlab.build import build_parts, check_single_choices
from lrlab.instantiate import instantiate_node
from lrlab.callbacks import summary as summary_io
from lrlab.callbacks.interrupt import GracefulInterrupt
from lrlab.callbacks.memory import PeakMemory
from lrlab.callbacks.rng import RNGState
from lrlab.callbacks.summary import RunSummary
from lrlab.callbacks.throughput import Throughput
from lrlab.errors import ConfigError, require
from lrlab.tasks.base import NonFiniteLossError
from lrlab.validation import check_config

RUN_KEYS = ("paths", "run_name", "resume", "ckpt_path", "hydra", "logger", "callbacks")


def compose(overrides: list[str] | tuple = (), run_dir: str | None = None) -> DictConfig:
    """The composed config, as `lrlab train` would build it; `run_dir` fixes `paths.run_dir`."""
    check_single_choices(overrides)
    extra = [f"paths.run_dir={run_dir}"] if run_dir else []
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, *extra])


def config_hash(cfg: DictConfig) -> str:
    plain = OmegaConf.to_container(cfg, resolve=False)
    for key in RUN_KEYS:
        plain.pop(key, None)
    return hashlib.sha256(OmegaConf.to_yaml(OmegaConf.create(plain)).encode()).hexdigest()[:16]


def git_sha() -> str:
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    return os.environ.get("LRLAB_GIT_SHA", "unknown")


def check_optimizer(task) -> None:
    """Build the optimizer once up front, so its bad hyperparameters fail before training."""
    task.configure_optimizers()


def _progress_bar(cfg: DictConfig) -> bool:
    if cfg.trainer.get("enable_progress_bar") is not None:
        return bool(cfg.trainer.enable_progress_bar)
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def build_trainer(cfg: DictConfig, run_dir: Path, own_callbacks: list) -> L.Trainer:
    callbacks = [instantiate_node(node, f"callbacks.{name}") for name, node in (cfg.callbacks or {}).items()]
    loggers = [instantiate_node(node, f"logger.{name}") for name, node in (cfg.logger or {}).items()]
    if not loggers:  # the lr monitor needs somewhere to write
        callbacks = [cb for cb in callbacks if type(cb).__name__ != "LearningRateMonitor"]
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
              if k != "enable_progress_bar"}
    strategy = kwargs.pop("strategy", "auto")
    if strategy == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy()
    return L.Trainer(**kwargs, strategy=strategy, callbacks=[*callbacks, *own_callbacks],
                     logger=loggers or False, default_root_dir=str(run_dir),
                     enable_progress_bar=_progress_bar(cfg), use_distributed_sampler=False,
                     enable_model_summary=False)


def resolve_checkpoint(cfg: DictConfig, run_dir: Path) -> str | None:
    if cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path))
        require(path.is_file(), "ckpt_path", str(path), "must be an existing checkpoint file")
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # any unpickling failure means the file is not a usable checkpoint
            raise ConfigError("ckpt_path", str(path), f"unreadable checkpoint ({type(err).__name__})") from None
        return str(path)
    resume = cfg.get("resume")
    if resume in (None, False, "none"):
        return None
    require(resume == "auto", "resume", resume, "one of auto, null (or use ckpt_path=PATH)")
    last = run_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.exists() else None


def has_results(run_dir: Path) -> bool:
    return (run_dir / "summary.json").exists() or any((run_dir / "checkpoints").glob("*.ckpt"))


def run(cfg: DictConfig) -> dict:
    """Train one configuration and return its summary (also written to `summary.json`)."""
    run_dir = Path(str(cfg.paths.run_dir))
    resuming = cfg.get("resume") == "auto" or bool(cfg.get("ckpt_path"))
    if has_results(run_dir) and not resuming:
        raise ConfigError("run_name", cfg.run_name, f"{run_dir} already holds a run: pass resume=auto or a new run_name")
    fresh_dir = not run_dir.exists() or not any(run_dir.iterdir())
    try:
        check_config(cfg)
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        torch.use_deterministic_algorithms(bool(cfg.deterministic), warn_only=True)
        datamodule, task = build_parts(cfg)
        check_optimizer(task)
        ckpt = resolve_checkpoint(cfg, run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        return fit(cfg, run_dir, datamodule, task, ckpt)
    except ConfigError:
        if fresh_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def fit(cfg: DictConfig, run_dir: Path, datamodule, task, ckpt: str | None) -> dict:
    info = {"seed": int(cfg.seed), "config_hash": config_hash(cfg), "git_sha": git_sha()}
    throughput, memory = Throughput(), PeakMemory()
    interrupt = GracefulInterrupt(str(run_dir / "checkpoints"))
    summary = RunSummary(str(run_dir), info, throughput, memory, interrupt)
    trainer = build_trainer(cfg, run_dir, [throughput, memory, interrupt, summary, RNGState()])
    error = None
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt)
    except NonFiniteLossError as err:
        error = err
    except KeyboardInterrupt:
        pass
    finally:
        _finish_loggers(trainer)
    if error is not None:
        last = run_dir / "checkpoints" / "last.ckpt"
        where = f"last good checkpoint: {last}" if last.exists() else "no checkpoint was saved"
        raise TrainingFailed(f"{error}; run stopped ({where})")
    return summary_io.read(run_dir) if trainer.is_global_zero else None


class TrainingFailed(RuntimeError):
    """A run that started but could not finish (non-finite loss); the summary says "failed"."""


def _finish_loggers(trainer: L.Trainer) -> None:
    """Close each logger so the next multirun job does not write into it (wandb)."""
    for lg in trainer.loggers:
        lg.finalize("success")
        if type(lg).__name__ == "WandbLogger":
            import wandb

            wandb.finish()
