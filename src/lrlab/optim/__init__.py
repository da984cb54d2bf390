"""Optimizers. Each builder is `build(model, **hyperparameters) -> torch.optim.Optimizer`;
a config names it with `_target_` and the runner calls it with the model."""

from lrlab.optim.routing import split_params, state_bytes

__all__ = ["split_params", "state_bytes"]
