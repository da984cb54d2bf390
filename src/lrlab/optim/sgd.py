"""SGD with optional (Nesterov) momentum; no decay on 1-D parameters."""

import torch
from torch import nn

from lrlab.errors import require
from lrlab.optim.routing import decay_groups, trainable


def build(model: nn.Module, lr: float = 0.1, momentum: float = 0.9, nesterov: bool = False,
          weight_decay: float = 0.0) -> torch.optim.Optimizer:
    require(lr > 0, "optimizer.lr", lr, "must be > 0")
    require(0 <= momentum < 1, "optimizer.momentum", momentum, "must be in [0, 1)")
    groups = decay_groups(trainable(model), weight_decay)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
