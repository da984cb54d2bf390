"""The sweep: optuna's ask/tell over `lrlab.train.run`, its study kept in the sweep dir.

`lrlab sweep sweep=NAME [sweep.n_trials=N] [train overrides]` composes the train config with the
`sweep` node of `conf/sweep/NAME.yaml` (search space `params` in Hydra's sweep syntax, see
`space.py`; `n_trials`, `n_jobs`, `sampler` tpe|random|grid, `seed`, `pruner` median|none with
`startup_trials` and `warmup_steps`) and optimises `objective.metric` (`objective.mode`).

- Before anything is written, the settings, the search space and a run at each known value of
  each key (an interval's bounds, every choice) are checked as `lrlab train` checks a run.
- The study lives in `<paths.output_dir>/sweeps/<run_name>/study.db` (optuna's own schema,
  `optuna.storages.RDBStorage` on SQLite); trial N trains in `<sweep dir>/N`. The sweep holds
  the dir's lock while it runs. Rerunning the same command (same run_name) continues: trials a
  killed sweep left running are trained again with `resume=auto` (from their last checkpoint),
  then new trials are asked until the study holds `n_trials`. A rerun with other settings than
  `n_trials` and `n_jobs` is refused.
- Pruned trials stop early (`pruning.py`) and are told as pruned; failed trials as failed; a
  trial interrupted by SIGINT/SIGTERM stays running in the study, and the sweep stops.
- `n_jobs` > 1 trains that many trials at once in worker processes, each with its share of
  the cores (`lrlab.parallel`).
"""

import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from lrlab import objective, parallel, rundir
from lrlab.errors import ConfigError, require
from lrlab.hydra_app import Source
from lrlab.sweep import space as spaces

STUDY_NAME = "lrlab"
STUDY_FILE = "study.db"
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
MAY_CHANGE = ("n_trials", "n_jobs")  # between a sweep and its rerun


@dataclass(frozen=True)
class Settings:
    params: dict
    n_trials: int = 20
    n_jobs: int = 1
    sampler: str = "tpe"
    seed: int = 0
    pruner: str = "median"
    startup_trials: int = 3  # trials before the pruner prunes
    warmup_steps: int = 0  # steps of each trial before it may be pruned


def settings(node) -> Settings:
    """The sweep node's settings, each checked (one `sweep.KEY=VALUE: ...` line otherwise)."""
    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    known = set(Settings.__dataclass_fields__)
    unknown = sorted(set(plain) - known)
    require(not unknown, f"sweep.{unknown[0] if unknown else ''}", plain.get(unknown[0]) if unknown else None,
            f"no such sweep setting: one of {', '.join(sorted(known))}")
    require(isinstance(plain.get("params"), dict) and plain["params"], "sweep.params", plain.get("params"),
            "a search space {KEY: SWEEP}, e.g. {optimizer.lr: 'tag(log, interval(1e-4, 1e-1))'}")
    made = Settings(**plain)
    for key in ("n_trials", "n_jobs"):
        value = getattr(made, key)
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"sweep.{key}", value,
                "an integer >= 1")
    for key in ("seed", "startup_trials", "warmup_steps"):
        value = getattr(made, key)
        require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"sweep.{key}", value,
                "an integer >= 0")
    require(made.sampler in SAMPLERS, "sweep.sampler", made.sampler, f"one of {', '.join(SAMPLERS)}")
    require(made.pruner in PRUNERS, "sweep.pruner", made.pruner, f"one of {', '.join(PRUNERS)}")
    return made


def make_sampler(chosen: Settings, space: dict, earlier_trials: int = 0):
    """The sampler; a continued study seeds it past its earlier trials (the same seed would draw
    the first trials' values again)."""
    import optuna

    seed = chosen.seed + earlier_trials
    if chosen.sampler == "grid":
        return optuna.samplers.GridSampler(spaces.grid(space), seed=seed)
    if chosen.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(chosen: Settings):
    import optuna

    if chosen.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=chosen.startup_trials, n_warmup_steps=chosen.warmup_steps)


@dataclass
class Sweep:
    """A checked sweep: where it lives, what each trial trains and what it optimises."""
    sweep_dir: Path
    run_name: str
    overrides: list[str]  # every trial's train overrides, before the trial's own values
    space: dict
    settings: Settings
    metric: str
    mode: str
    source: Source = field(default_factory=Source)
    wandb: bool = False

    @property
    def storage_url(self) -> str:
        return f"sqlite:///{self.sweep_dir / STUDY_FILE}"

    @property
    def n_trials(self) -> int:
        if self.settings.sampler == "grid":
            return min(self.settings.n_trials, spaces.grid_size(spaces.grid(self.space)))
        return self.settings.n_trials

    def record(self) -> dict:
        """What the study was made with; a rerun must match it (except `MAY_CHANGE`)."""
        chosen = {k: v for k, v in asdict(self.settings).items() if k not in MAY_CHANGE}
        kept = [o for o in self.overrides if not o.lstrip("+~").startswith("sweep.")]  # in `settings`
        return {"settings": chosen, "overrides": kept, "metric": self.metric, "mode": self.mode}

    def trial_overrides(self, number: int, values: dict) -> list[str]:
        named = [f"logger.wandb.name={self.run_name}/{number}", f"logger.wandb.group={self.run_name}"] if self.wandb else []
        return [*self.overrides, *spaces.overrides(values), *named, "resume=auto"]


def plan(overrides: list[str], source: Source = Source()) -> Sweep:
    """The sweep that `lrlab sweep OVERRIDES` runs, every setting checked; nothing is written."""
    from lrlab.train import compose

    cfg = compose(overrides, run_dir="/nonexistent", source=source)
    require(cfg.get("sweep") is not None, "sweep", None, "is required: sweep=NAME (`lrlab ls sweep` lists them)")
    chosen = settings(cfg.sweep)
    space, fixed = spaces.parse(chosen.params)
    for key in space:
        require(OmegaConf.select(cfg, key, default=KeyError) is not KeyError, f"sweep.params.{key}",
                chosen.params[key], f"{key} is not a key of the config (`lrlab show` prints them)")
    rundir.check_run_name(cfg.run_name)
    sweep_dir = Path(str(cfg.paths.output_dir)).absolute() / "sweeps" / str(cfg.run_name)
    sweep = Sweep(sweep_dir, str(cfg.run_name), [*overrides, f"run_name={cfg.run_name}", *fixed], space, chosen,
                  str(cfg.objective.metric), str(cfg.objective.mode), source, "wandb" in (cfg.logger or {}))
    if chosen.sampler == "grid":
        spaces.grid(space)
    return sweep


def precheck(sweep: Sweep) -> None:
    """Check a run at each known value of each searched key, and a rerun's settings against the
    stored study, before anything is written (ConfigError names the first problem)."""
    from lrlab.train import compose, prepare

    holder = rundir.RunLock(sweep.sweep_dir).holder()
    if holder is not None:
        raise rundir.in_use(sweep.run_name, sweep.sweep_dir, holder)
    if (sweep.sweep_dir / STUDY_FILE).is_file():
        check_rerun(sweep)
    known = spaces.bounds(sweep.space)
    first = {key: values[0] for key, values in known.items()}
    probes = [first] + [{**first, key: value} for key, values in known.items() for value in values[1:]]
    place = sweep.sweep_dir / "0"
    for probe in probes:
        prepare(compose(sweep.trial_overrides(0, probe), run_dir=str(place), source=sweep.source), place)


def check_rerun(sweep: Sweep) -> None:
    import optuna

    stored = optuna.load_study(study_name=STUDY_NAME, storage=sweep.storage_url).user_attrs.get("sweep")
    now = sweep.record()
    if stored != now:
        changed = sorted(k for k in now if stored is None or stored.get(k) != now[k])
        raise ConfigError("run_name", sweep.run_name, f"{sweep.sweep_dir} holds a sweep made with other "
                          f"{', '.join(changed)}: rerun it as it was (only sweep.n_trials and sweep.n_jobs may "
                          "change), or choose another run_name")


# --- one trial ----------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialSpec:
    number: int
    trial_id: int
    overrides: list[str]
    run_dir: str
    storage_url: str
    metric: str
    mode: str
    settings: Settings
    source: Source


@dataclass(frozen=True)
class Outcome:
    number: int
    state: str  # complete, pruned, fail, interrupted
    value: float | None = None
    reason: str = ""
    seconds: float = 0.0


def train_trial(spec: TrialSpec) -> Outcome:
    """Train one trial (in this process or a worker) and say how it ended."""
    from lrlab.sweep.pruning import Pruning
    from lrlab.train import TrainingFailed, compose, run

    started = time.perf_counter()
    callbacks = [] if spec.settings.pruner == "none" else [Pruning(trial_handle(spec), spec.metric)]
    try:
        cfg = compose(spec.overrides, run_dir=spec.run_dir, source=spec.source)
        summary = run(cfg, OmegaConf.create({"hydra": {"overrides": {"task": spec.overrides}}}), callbacks)
    except (ConfigError, TrainingFailed) as err:
        return Outcome(spec.number, "fail", reason=str(err).split(";")[0], seconds=time.perf_counter() - started)
    seconds = time.perf_counter() - started
    status = summary["status"]
    if status == "completed":
        problem = objective.missing(summary, spec.metric)
        if problem:
            return Outcome(spec.number, "fail", reason=problem, seconds=seconds)
        return Outcome(spec.number, "complete", objective.value(summary, spec.metric, spec.mode), seconds=seconds)
    state = {"pruned": "pruned", "interrupted": "interrupted"}.get(status, "fail")
    return Outcome(spec.number, state, reason=(summary.get("error") or status).split(";")[0], seconds=seconds)


def trial_handle(spec: TrialSpec):
    """The study's trial `spec.trial_id`, to report intermediate values to (from any process)."""
    import optuna

    study = optuna.load_study(study_name=STUDY_NAME, storage=spec.storage_url, pruner=make_pruner(spec.settings))
    return optuna.trial.Trial(study, spec.trial_id)


class Inline(Executor):
    """Trials one after another in this process (n_jobs = 1)."""

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


# --- the study ----------------------------------------------------------------------------
def open_study(sweep: Sweep):
    import optuna

    storage = optuna.storages.RDBStorage(sweep.storage_url, engine_kwargs={"connect_args": {"timeout": 120}})
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, load_if_exists=True,
                                direction="minimize" if sweep.mode == "min" else "maximize",
                                sampler=make_sampler(sweep.settings, sweep.space), pruner=make_pruner(sweep.settings))
    if "sweep" not in study.user_attrs:
        study.set_user_attr("sweep", sweep.record())
    if study.trials:
        study.sampler = make_sampler(sweep.settings, sweep.space, len(study.trials))
    return study


def optimise(sweep: Sweep, report: Callable[[str], None] = print):
    """Run the sweep to `n_trials` trials (continuing a stored study); returns the study."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = rundir.RunLock(sweep.sweep_dir)
    lock.acquire(sweep.run_name)
    try:
        study = open_study(sweep)
        again = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if again:
            report(f"continuing {len(again)} trial(s) a stopped sweep left running: "
                   f"{', '.join(str(t.number) for t in again)}")
        to_ask = max(0, sweep.n_trials - len(study.trials))
        queue = [(t.number, t._trial_id, t.params) for t in again]
        jobs = sweep.settings.n_jobs
        with parallel.worker_pool(jobs) if jobs > 1 else Inline() as pool:
            running: dict[Future, dict] = {}
            stopping = False
            while True:
                while not stopping and len(running) < jobs and (queue or to_ask):
                    if queue:
                        number, trial_id, values = queue.pop(0)
                    else:
                        asked = study.ask(sweep.space)
                        number, trial_id, values, to_ask = asked.number, asked._trial_id, asked.params, to_ask - 1
                    running[pool.submit(train_trial, spec(sweep, number, trial_id, values))] = values
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    values = running.pop(future)
                    stopping |= tell(study, future.result(), values, sweep, report)
    finally:
        lock.release()
    return study


def spec(sweep: Sweep, number: int, trial_id: int, values: dict) -> TrialSpec:
    return TrialSpec(number, trial_id, sweep.trial_overrides(number, values), str(sweep.sweep_dir / str(number)),
                     sweep.storage_url, sweep.metric, sweep.mode, sweep.settings, sweep.source)


def tell(study, outcome: Outcome, values: dict, sweep: Sweep, report: Callable[[str], None]) -> bool:
    """Record a trial's outcome in the study; True when the sweep must stop (interrupted)."""
    from optuna.trial import TrialState

    shown = " ".join(spaces.overrides(values))
    if outcome.state == "interrupted":
        report(f"trial {outcome.number} interrupted ({shown}); rerun the same command to continue it")
        return True
    if outcome.state == "complete":
        study.tell(outcome.number, outcome.value)
        report(f"trial {outcome.number}: {sweep.metric}={outcome.value:.4g} ({shown}) in {outcome.seconds:.0f} s")
    else:
        study.tell(outcome.number, state=TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL)
        report(f"trial {outcome.number}: {outcome.state} ({shown}): {outcome.reason}")
    return False


def summary_line(study, sweep: Sweep) -> str:
    from optuna.trial import TrialState

    counts = {state: len(study.get_trials(deepcopy=False, states=(state,)))
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    parts = [f"{n} {state.name.lower()}" for state, n in counts.items() if n]
    line = f"{len(study.trials)} trials: {', '.join(parts) or 'none'}"
    if counts[TrialState.COMPLETE]:
        best = study.best_trial
        line += (f"; best: trial {best.number}, {sweep.metric}={best.value:.4g} "
                 f"({' '.join(spaces.overrides(best.params))})")
    return line
