"""`hydra/sweeper=lrlab_optuna`: an optimising Hydra sweeper on optuna >= 4's ask/tell.

Hydra's own optuna sweeper pins optuna < 3 (whose SQLite storage fails under SQLAlchemy 2);
this one reads the same config: `params` (and sweep overrides on the command line) in Hydra's
sweep syntax (`lrlab.sweep.space`), `n_trials`, `n_jobs` (trials per batch: the launcher runs a
batch, at once under `hydra/launcher=parallel`), `sampler` (tpe, random, grid), `seed`,
`direction` (null: the app's `objective.mode`), `storage` (null: in memory; e.g.
`sqlite:///study.db`) and `study_name`. Each job's return value (lrlab's objective) is told to
the study; a failed job, or one returning nothing or a non-finite value, is told as failed.
The best trial is written to `<sweep dir>/optimization_results.yaml`.

    lrlab train -m hydra/sweeper=lrlab_optuna hydra.sweeper.n_trials=8 \
        experiment=baseline/digits_mlp_adamw 'optimizer.lr=tag(log, interval(1e-4, 1e-1))'
"""

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf


@dataclass
class LrlabOptunaSweeperConf:
    _target_: str = "hydra_plugins.lrlab_sweeper.lrlab_sweeper.LrlabOptunaSweeper"
    n_trials: int = 20
    n_jobs: int = 1
    sampler: str = "tpe"
    seed: int = 0
    direction: str | None = None
    storage: str | None = None
    study_name: str = "lrlab"
    params: Optional[Dict[str, Any]] = None


ConfigStore.instance().store(group="hydra/sweeper", name="lrlab_optuna", node=LrlabOptunaSweeperConf,
                             provider="lrlab")


class LrlabOptunaSweeper(Sweeper):
    def __init__(self, n_trials: int, n_jobs: int, sampler: str, seed: int, direction: str | None,
                 storage: str | None, study_name: str, params: dict):
        self.n_trials, self.n_jobs, self.sampler, self.seed = n_trials, n_jobs, sampler, seed
        self.direction, self.storage, self.study_name = direction, storage, study_name
        self.params = dict(params or {})
        self.config = self.launcher = self.hydra_context = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(config=config, hydra_context=hydra_context,
                                                                task_function=task_function)

    def search_space(self, arguments: list[str]) -> tuple[dict, list[str]]:
        from lrlab.sweep import space as spaces

        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        texts = [*(f"{k}={v}" for k, v in self.params.items()), *arguments]
        searched, fixed = {}, {}
        for override in parser.parse_overrides(texts):
            key = override.get_key_element()
            if override.is_sweep_override():
                searched[key] = spaces.distribution(override, key, override.input_line)
            else:
                fixed[key] = f"{key}={override.get_value_element_as_str()}"
        return searched, list(fixed.values())

    def study(self, searched: dict):
        import optuna

        from lrlab.sweep.study import Settings, make_sampler

        mode = self.direction or OmegaConf.select(self.config, "objective.mode", default="min")
        direction = "maximize" if mode in ("max", "maximize") else "minimize"
        sampler = make_sampler(Settings(params=self.params, sampler=self.sampler, seed=self.seed), searched)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.create_study(storage=self.storage, study_name=self.study_name, direction=direction,
                                   sampler=sampler, load_if_exists=True)

    def sweep(self, arguments: list[str]):
        from optuna.trial import TrialState

        from lrlab.sweep import space as spaces

        searched, fixed = self.search_space(arguments)
        study = self.study(searched)
        launched = 0
        while launched < self.n_trials:
            trials = [study.ask(searched) for _ in range(min(self.n_jobs, self.n_trials - launched))]
            returns = self.launcher.launch([[*fixed, *spaces.overrides(t.params)] for t in trials],
                                           initial_job_idx=launched)
            for trial, job in zip(trials, returns):
                value = job.return_value if job.status == JobStatus.COMPLETED else None
                if isinstance(value, (int, float)) and math.isfinite(value):
                    study.tell(trial, float(value))
                else:
                    study.tell(trial, state=TrialState.FAIL)
            launched += len(trials)
        self.write_results(study)
        return study

    def write_results(self, study) -> None:
        completed = [t for t in study.trials if t.state.name == "COMPLETE"]
        results = {"name": "lrlab_optuna", "n_trials": len(study.trials), "completed": len(completed)}
        if completed:
            results.update(best_params=dict(study.best_trial.params), best_value=study.best_value,
                           best_trial=study.best_trial.number)
        folder = Path(str(self.config.hydra.sweep.dir))
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(results), folder / "optimization_results.yaml")
