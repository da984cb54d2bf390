"""Optimizers. Each builder is `build(model, **hyperparameters) -> torch.optim.Optimizer`;
a config names it with `_target_` and the runner calls it with the model.

Outside the runner, as any torch optimizer:
`LowRankAdamW(lowrank_param_groups(model, rank=4), lr=1e-3)` (GaLore by default; the projected
group's settings choose Fira, FRUGAL, DCT, ...: see `lowrank_adam.py`)."""

from lrlab.optim.lowrank_adam import LowRankAdamW
from lrlab.optim.routing import lowrank_param_groups, split_params
from lrlab.optim.state import state_bytes

__all__ = ["LowRankAdamW", "lowrank_param_groups", "split_params", "state_bytes"]
