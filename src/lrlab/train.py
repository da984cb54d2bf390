"""compose → instantiate → fit → summary. Nothing method-specific lives here.

`run(cfg)` is the whole job: tests call it on a config from `compose(overrides)`, the CLI
calls it through `hydra.main` (run dirs, multirun). `prepare(cfg)` makes every check a run
makes before it writes anything (the CLI calls it for every job before Hydra creates a dir):
bad input, a run dir that holds results or is in use, a resume that would change what is
trained, an output dir that cannot take a checkpoint. A run dir created by a failed start is
removed again. The run then holds the dir's lock, writes its records and fits.

`hydra_main` is the Hydra entry point behind `lrlab train` (run dirs, multirun, every Hydra
flag); its task function `train` returns the run's objective (`objective.metric`'s final value, see
`lrlab.objective`), so any Hydra sweeper can optimise it. A single run that fails exits at once
(2: bad input or the file system, 1: training failed). In a multirun a failing job is recorded
(its summary says "failed" and why; `FAILED` maps its number to the reason and its overrides
for the one-line summary the CLI prints at the end) and returns the worst value, so the sweep
goes on; with `objective.on_failure=raise` it raises for sweepers that handle failed jobs.
Under the `parallel` launcher each job runs with its share of the cores.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from lrlab import conf_dir, objective, parallel, resolvers  # noqa: F401  (resolvers registers ${mul:...}, ${stamp:...})
from lrlab import resume as resuming
from lrlab import rundir, sharded_checkpoint
from lrlab.build import build_parts, check_optimizer, compose  # compose: also the public `lrlab.train.compose`
from lrlab.callbacks import summary as summary_io
from lrlab.callbacks.checkpoint import AtomicCheckpointIO, CheckpointGuard, NonFiniteStateError, non_finite
from lrlab.callbacks.interrupt import GracefulInterrupt
from lrlab.callbacks.memory import PeakMemory
from lrlab.callbacks.rng import RNGState
from lrlab.callbacks.resume import ApplyResumeChanges
from lrlab.callbacks.summary import RunStopped, RunSummary
from lrlab.callbacks.throughput import Throughput
from lrlab.errors import ConfigError, require
from lrlab.fsdp2 import fsdp2_strategy
from lrlab.instantiate import instantiate_node
from lrlab.tasks.base import NonFiniteLossError
from lrlab.validate import check_config, check_structure

RUN_KEYS = ("paths", "run_name", "resume", "ckpt_path", "hydra", "logger", "callbacks", "threads", "objective", "sweep")


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


def _progress_bar(cfg: DictConfig) -> bool:
    if cfg.trainer.get("enable_progress_bar") is not None:
        return bool(cfg.trainer.enable_progress_bar)
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


# --- determinism ----------------------------------------------------------------------------
def determinism(cfg: DictConfig) -> bool | str:
    """The Trainer's `deterministic` from the one switch `deterministic`: true (deterministic
    algorithms, a warning where an op has none), strict (an error there) or false."""
    value = cfg.get("deterministic")
    if value in (False, None):
        return False
    if value != "strict":
        return "warn"
    return True


def apply_determinism(cfg: DictConfig) -> None:
    mode = determinism(cfg)
    if mode:  # cuBLAS reads this when its first handle is made: set it before anything touches CUDA
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(mode), warn_only=mode == "warn")


# --- the trainer ----------------------------------------------------------------------------
def checkpoint_format(trainer: dict) -> str | None:
    """`trainer.checkpoint_format` (FSDP2 only): `sharded` (each rank writes its own pieces) or
    `consolidated` (one file gathered on rank 0)."""
    chosen = trainer.get("checkpoint_format")
    if chosen is None:
        return None
    require(trainer.get("strategy") == "fsdp2", "trainer.checkpoint_format", chosen,
            "only with trainer=fsdp2 (every other strategy writes one file)")
    require(chosen in sharded_checkpoint.FORMATS, "trainer.checkpoint_format", chosen, f"one of {', '.join(sharded_checkpoint.FORMATS)}")
    return chosen


def trainer_kwargs(cfg: DictConfig) -> dict:
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
              if k != "enable_progress_bar"}
    form = checkpoint_format(kwargs)
    kwargs.pop("checkpoint_format", None)
    strategy = kwargs.pop("strategy", "auto")
    if strategy == "fsdp2":
        strategy = fsdp2_strategy(kwargs.get("devices"), kwargs.get("num_nodes") or 1, form or "sharded")
    kwargs["plugins"] = [AtomicCheckpointIO()]  # FSDP2 consolidated too: rank 0 writes its file through it
    return {**kwargs, "strategy": strategy, "deterministic": determinism(cfg), "use_distributed_sampler": False,
            "enable_model_summary": False}


def check_trainer(cfg: DictConfig) -> None:
    """Build a bare Trainer from the config, so that unknown keys, precisions or accelerators
    fail before anything is written."""
    checkpoint_format(OmegaConf.to_container(cfg.trainer, resolve=True))
    try:
        L.Trainer(**trainer_kwargs(cfg), logger=False, enable_checkpointing=False, enable_progress_bar=False)
    except TypeError as err:
        unknown = str(err).rsplit("'", 2)[-2] if "unexpected keyword" in str(err) else None
        if unknown is None:
            raise
        raise ConfigError(f"trainer.{unknown}", cfg.trainer.get(unknown),
                          "no such Trainer argument (`lrlab show` prints the trainer keys)") from None
    except Exception as err:  # Lightning's MisconfigurationException / ValueError / RuntimeError
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        lowered = text.lower()
        if any(word in lowered for word in ("not available", "backend found", "no gpu", "cuda", "requirement")):
            key, text = "accelerator", "is not available on this machine: use trainer=cpu"
        else:
            key = next((k for k in ("strategy", "devices", "precision", "accelerator") if k in lowered), None)
        raise ConfigError(f"trainer.{key}" if key else "trainer", cfg.trainer.get(key) if key else None,
                          text) from None


def build_trainer(cfg: DictConfig, run_dir: Path, own_callbacks: list, resume_step: int = 0) -> L.Trainer:
    callbacks = [instantiate_node(node, f"callbacks.{name}") for name, node in (cfg.callbacks or {}).items()]
    loggers = [instantiate_node(node, f"logger.{name}") for name, node in (cfg.logger or {}).items()]
    for logger in loggers:
        if hasattr(logger, "resume_from"):
            logger.resume_from(resume_step)
    if not loggers:  # the lr monitor needs somewhere to write
        callbacks = [cb for cb in callbacks if type(cb).__name__ != "LearningRateMonitor"]
    return L.Trainer(**trainer_kwargs(cfg), callbacks=[*callbacks, *own_callbacks], logger=loggers or False,
                     default_root_dir=str(run_dir), enable_progress_bar=_progress_bar(cfg))


# --- where a run starts ---------------------------------------------------------------------
def launched_rank() -> bool:
    """True in the processes of ranks > 0 (re-launched by `ddp`/`fsdp2`, started by torchrun on
    any node, or by srun under SLURM): they train, but global rank 0 alone checks and owns the run
    dir. A node's first process has LOCAL_RANK 0, so the node (GROUP_RANK, NODE_RANK) and global
    ranks (RANK, SLURM_PROCID) count too."""
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
    return any(int(os.environ.get(name, "0") or 0) > 0 for name in names)


def _config_yaml(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None


def resolve_start(cfg: DictConfig, run_dir: Path) -> resuming.Start:
    """The checkpoint this run continues from, checked against the new config."""
    if cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path))
        require(path.exists(), "ckpt_path", str(path), "must be an existing checkpoint (file, or sharded directory)")
        checkpoint, reason = resuming.try_load(path)
        if checkpoint is None:
            raise ConfigError("ckpt_path", str(path), f"unreadable checkpoint ({reason})")
        changed = resuming.checked_changes(checkpoint, cfg, "ckpt_path", str(path), _config_yaml(path.parent.parent))
        check_processes(checkpoint, cfg, "ckpt_path", str(path))
        return resuming.Start(str(path), int(checkpoint["global_step"]), changed)
    resume = cfg.get("resume")
    if resume in (None, False, "none"):
        return resuming.Start()
    require(resume == "auto", "resume", resume, "one of auto, null (or use ckpt_path=PATH)")
    path, checkpoint, skipped = resuming.newest_readable(run_dir)
    if path is None:
        require(not skipped, "resume", resume, f"no readable checkpoint in {run_dir / 'checkpoints'} "
                f"({'; '.join(skipped)}): summary.json is left as it was; start a new run_name")
        require(rundir.read_summary(run_dir) is None or completed(cfg, run_dir) is not None, "resume", resume,
                f"{run_dir} holds a summary but no checkpoint to continue from: start a new run_name")
        return resuming.Start()
    changed = resuming.checked_changes(checkpoint, cfg, "resume", resume, _config_yaml(run_dir))
    check_processes(checkpoint, cfg, "resume", resume)
    return resuming.Start(str(path), int(checkpoint["global_step"]), changed, skipped)


def check_processes(checkpoint: dict, cfg: DictConfig, key: str, value) -> None:
    """A sharded checkpoint resumes only on the number of processes that wrote it."""
    if "shards" in checkpoint:
        devices, nodes = cfg.trainer.get("devices"), int(cfg.trainer.get("num_nodes") or 1)
        sharded_checkpoint.check_world_size(checkpoint, devices * nodes if isinstance(devices, int) else None, key, value)


def completed(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The summary of a completed run that `resume=auto` has nothing to add to."""
    summary = rundir.read_summary(run_dir)
    done = (cfg.get("resume") == "auto" and not cfg.get("ckpt_path") and summary is not None
            and summary.get("status") == "completed" and summary.get("steps", 0) >= int(cfg.trainer.max_steps))
    return summary if done else None


def checkpoint_bytes(task) -> int:
    """What saving needs on disk: parameters and two moments, twice (the new file is written
    while the previous one stays), plus room for the records."""
    params = sum(p.numel() * p.element_size() for p in task.parameters())
    return 2 * 3 * params + 16 * 2**20


@dataclass
class Prepared:
    """A run that passed every check: where it starts and its parts; or, for `resume=auto` on a
    completed run, only that run's summary (`complete`)."""
    start: resuming.Start | None = None
    datamodule: object = None
    task: object = None
    complete: dict | None = None


def prepare(cfg: DictConfig, run_dir: Path, chosen_by: str = "run_name") -> Prepared:
    """Every check a run makes before it writes anything; ConfigError names the first problem.
    `chosen_by` is the key that placed the run dir (run_name, or hydra.run.dir / hydra.sweep.dir
    when the user fixed it), so that a refusal names what to change."""
    check_structure(cfg)
    rundir.check_run_name(cfg.run_name)
    check_config(cfg)
    owner = not launched_rank()
    resumes = cfg.get("resume") == "auto" or bool(cfg.get("ckpt_path"))
    if owner:
        holder = rundir.RunLock(run_dir).holder()
        if holder is not None:
            raise rundir.in_use(cfg.run_name, run_dir, holder)
        require(resumes or not rundir.has_results(run_dir), chosen_by,
                cfg.run_name if chosen_by == "run_name" else str(run_dir),
                f"{run_dir} already holds a run: pass resume=auto to continue it, or choose another {chosen_by}")
    start = resolve_start(cfg, run_dir)
    summary = completed(cfg, run_dir)
    if summary is not None:
        return Prepared(complete=summary)
    apply_determinism(cfg)
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule, task = build_parts(cfg)
    check_optimizer(task)
    check_trainer(cfg)
    if owner:
        where = ("paths.output_dir", str(cfg.paths.output_dir)) if chosen_by == "run_name" else (chosen_by, str(run_dir))
        rundir.check_writable(run_dir, *where, checkpoint_bytes(task))
    return Prepared(start, datamodule, task)


# --- the run --------------------------------------------------------------------------------
def run(cfg: DictConfig, hydra_cfg: DictConfig | None = None, callbacks: list | tuple = ()) -> dict | None:
    """Train one configuration and return its summary (also written to `summary.json`).
    `hydra_cfg` (from the CLI) is recorded in `.hydra/` once the run is accepted; `callbacks`
    join the trainer's (a sweep's pruning)."""
    run_dir = Path(str(cfg.paths.run_dir))
    if cfg.get("threads"):
        parallel.use_threads(int(cfg.threads))
    owner = not launched_rank()
    fresh_dir = not run_dir.exists() or not any(run_dir.iterdir())
    lock = rundir.RunLock(run_dir)
    try:
        ready = prepare(cfg, run_dir)
        if ready.complete is not None:
            print(f"note: {run_dir} is complete at step {ready.complete['steps']}; summary.json unchanged "
                  "(raise trainer.max_steps to continue it)", file=sys.stderr)
            return ready.complete
        start = ready.start
        if start.skipped:
            print(f"warning: resume=auto: passed over {'; '.join(start.skipped)}; continuing from {start.ckpt}",
                  file=sys.stderr)
        if owner:
            run_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire(cfg.run_name)
            require(bool(start.ckpt) or cfg.get("resume") == "auto" or not rundir.has_results(run_dir),
                    "run_name", cfg.run_name, f"{run_dir} already holds a run: pass resume=auto or a new run_name")
            rundir.remove_partials(run_dir)
            rundir.write_records(run_dir, cfg, start.record() if start.ckpt else None, hydra_cfg)
        return fit(cfg, run_dir, ready.datamodule, ready.task, start, callbacks)
    except ConfigError:
        if fresh_dir and owner and (lock.held or not (run_dir.exists() and any(run_dir.iterdir()))):
            lock.release()  # a dir this start created, and no other run uses: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        lock.release()


def resume_changes(cfg: DictConfig, start: resuming.Start) -> ApplyResumeChanges | None:
    lr = start.changed.get("optimizer.lr")
    reschedules = any(k == "trainer.max_steps" or k.startswith("scheduler.") for k in start.changed)
    if lr is None and not reschedules:
        return None
    scheduler = OmegaConf.to_container(cfg.scheduler, resolve=True) if reschedules else None
    return ApplyResumeChanges(lr[1] / lr[0] if lr else 1.0, scheduler, int(cfg.trainer.max_steps))


def global_batch_line(cfg: DictConfig, processes: int) -> str:
    """`data.batch_size` is per process (Lightning's convention): the samples of one optimizer step
    are that × processes × accumulated micro-batches."""
    per_process, accumulate = int(cfg.data.batch_size), int(cfg.trainer.get("accumulate_grad_batches") or 1)
    return (f"global batch: {per_process * processes * accumulate} = data.batch_size {per_process} × {processes} "
            f"process{'es' if processes > 1 else ''} × {accumulate} accumulated")


def fit(cfg: DictConfig, run_dir: Path, datamodule, task, start: resuming.Start, callbacks=()) -> dict | None:
    info = {"seed": int(cfg.seed), "config_hash": config_hash(cfg), "git_sha": git_sha()}
    throughput, memory = Throughput(), PeakMemory()
    interrupt = GracefulInterrupt(str(run_dir / "checkpoints"))
    summary = RunSummary(str(run_dir), info, throughput, memory, interrupt)
    changes = resume_changes(cfg, start)
    own = [CheckpointGuard(resuming.plain(cfg)), throughput, memory, interrupt, summary, RNGState(),
           *([changes] if changes else []), *callbacks]
    trainer = build_trainer(cfg, run_dir, own, start.step)
    for logger in trainer.loggers:  # the experiment: wandb config, TensorBoard hparams, CSV hparams.yaml
        logger.log_hyperparams(resuming.plain(cfg))
    if trainer.is_global_zero:
        print(global_batch_line(cfg, trainer.world_size), flush=True)
    error = None
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=start.ckpt, weights_only=True)
    except (NonFiniteLossError, NonFiniteStateError, OSError) as err:
        error = err
    except (KeyboardInterrupt, RunStopped):
        pass
    except Exception:
        error = diverged(task)  # e.g. a projection's SVD of the NaN gradients a diverged loss left
        if error is None:
            raise
    finally:
        _finish_loggers(trainer)
    if error is not None:
        raise stopped(error, run_dir, trainer.is_global_zero)
    return summary_io.read(run_dir) if trainer.is_global_zero else None


def diverged(task) -> NonFiniteLossError | None:
    """The non-finite loss the task recorded, if any (the loss check reads it back periodically)."""
    try:
        task.check_losses()
    except NonFiniteLossError as err:
        return err
    return None


class TrainingFailed(RuntimeError):
    """A run that started but could not finish (non-finite values, a full disk); the summary
    says "failed" and names a checkpoint that resumes. Exit code 1, or 2 for the file system."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


def last_finite_checkpoint(run_dir: Path) -> tuple[Path, int] | None:
    """The newest checkpoint that loads and holds only finite values."""
    for path in resuming.candidates(run_dir):
        try:
            checkpoint = resuming.load_whole(path)
        except Exception:  # unreadable or incomplete: not a place to resume from
            continue
        if isinstance(checkpoint, dict) and "global_step" in checkpoint and not non_finite(checkpoint):
            return path, int(checkpoint["global_step"])
    return None


def stopped(error: Exception, run_dir: Path, rank_zero: bool) -> TrainingFailed:
    found = last_finite_checkpoint(run_dir)
    if isinstance(error, OSError):
        what = f"{error.strerror or error} ({error.filename or 'writing the run dir'})"
        then = "free space, then continue with resume=auto" if rundir.no_space(error) else "fix it, then resume=auto"
        where = f"; last checkpoint: {found[0]} (step {found[1]})" if found else "; no checkpoint was saved"
        message, code = f"{what}: run stopped; {then}{where}", 2
    else:
        where = (f"resume from ckpt_path={found[0]} (step {found[1]}, finite) with a lower optimizer.lr"
                 if found else "no checkpoint was saved; rerun under a new run_name with a lower optimizer.lr")
        message, code = f"{error}; run stopped: {where}", 1
    if rank_zero:
        _record_error(run_dir, message)
    return TrainingFailed(message, code)


def _record_error(run_dir: Path, message: str) -> None:
    summary = summary_io.read(run_dir)
    if summary is not None and summary.get("status") == "failed":
        try:
            summary_io.write({**summary, "error": message}, run_dir)
        except OSError:
            pass


def _finish_loggers(trainer: L.Trainer) -> None:
    """Close each logger so the next multirun job does not write into it (wandb)."""
    for lg in trainer.loggers:
        try:
            lg.finalize("success")
        except OSError:
            pass
        if type(lg).__name__ == "WandbLogger":
            import wandb

            wandb.finish()


# --- the Hydra entry -------------------------------------------------------------------------
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
