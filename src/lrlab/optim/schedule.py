"""Learning-rate schedules as a multiplier of the base lr per optimizer step.

cosine: linear warmup from 0, then cosine decay to `min_lr_ratio` (GaLore: 10% warmup, to 10%).
linear: linear warmup, then linear decay to `min_lr_ratio`. constant: warmup, then flat.
"""

import math

import torch

from lrlab.errors import require

KINDS = ("cosine", "linear", "constant")


class LRMultiplier:
    """Picklable lr multiplier, so checkpoints hold no closures."""

    def __init__(self, kind: str, total_steps: int, warmup_steps: int, min_lr_ratio: float):
        self.kind, self.total, self.warmup, self.floor = kind, total_steps, warmup_steps, min_lr_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        if self.kind == "linear":
            return self.floor + (1 - self.floor) * (1 - progress)
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build(optimizer: torch.optim.Optimizer, total_steps: int, kind: str = "cosine",
          warmup_ratio: float = 0.1, min_lr_ratio: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    require(kind in KINDS, "scheduler.kind", kind, f"one of {', '.join(KINDS)}")
    require(0 <= warmup_ratio < 1, "scheduler.warmup_ratio", warmup_ratio, "must be in [0, 1)")
    require(0 <= min_lr_ratio <= 1, "scheduler.min_lr_ratio", min_lr_ratio, "must be in [0, 1]")
    warmup = int(round(warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, LRMultiplier(kind, total_steps, warmup, min_lr_ratio))
