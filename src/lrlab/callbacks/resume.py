"""Apply a resume's allowed changes that Lightning's restore would silently undo.

Lightning restores the optimizer and scheduler exactly as saved: the param groups' lr, the
scheduler's base lrs and its lr multiplier, whose length is the old `trainer.max_steps`. A
resume that changed `optimizer.lr`, `trainer.max_steps` or `scheduler.*` gets them here, after
the restore and before the first step: every lr scales by new/old, and the multiplier is the
one the new config builds, evaluated at the restored step.
"""

import lightning as L
import torch
from torch.optim.lr_scheduler import LambdaLR

from lrlab.optim import schedule


class ApplyResumeChanges(L.Callback):
    def __init__(self, lr_ratio: float = 1.0, scheduler: dict | None = None, total_steps: int = 0):
        self.lr_ratio, self.scheduler, self.total_steps = lr_ratio, scheduler, total_steps

    def on_train_start(self, trainer, pl_module) -> None:
        scheduled = set()
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, LambdaLR):
                self._reschedule(config.scheduler)
                scheduled.add(id(config.scheduler.optimizer))
        for optimizer in trainer.optimizers:
            if id(optimizer) not in scheduled:
                for group in optimizer.param_groups:
                    group["lr"] *= self.lr_ratio

    def _reschedule(self, scheduler: LambdaLR) -> None:
        if self.scheduler is not None:
            fresh = schedule.build(torch.optim.SGD([torch.zeros(1)], lr=1.0), self.total_steps, **self.scheduler)
            scheduler.lr_lambdas = [fresh.lr_lambdas[0]] * len(scheduler.lr_lambdas)
        scheduler.base_lrs = [base * self.lr_ratio for base in scheduler.base_lrs]
        for group, base, multiplier in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["initial_lr"] = base
            group["lr"] = base * multiplier(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in scheduler.optimizer.param_groups]
