"""Pruning a sweep's trial on an intermediate validation metric (optuna's pruners).

At every validation the trial reports `metric` at the step trained so far; when the study's
pruner (e.g. the median rule: worse than the median of earlier trials at the same step) says so,
the run stops there with status `pruned` in its summary, and the sweep records the trial as
pruned.
"""

import lightning as L

from lrlab.callbacks.summary import RunStopped


class Pruning(L.Callback):
    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        step = trainer.global_step
        self.trial.report(float(value), step)
        if self.trial.should_prune():
            raise RunStopped("pruned", f"pruned at step {step}: {self.metric}={float(value):.4g} "
                             "(the sweep's pruner ranked it below the earlier trials)")
