"""AdamW (Loshchilov & Hutter 2019): torch's implementation, no decay on 1-D parameters."""

import torch
from torch import nn

from lrlab.errors import require
from lrlab.optim.routing import decay_groups, trainable


def build(model: nn.Module, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0, foreach: bool | None = None) -> torch.optim.Optimizer:
    require(lr > 0, "optimizer.lr", lr, "must be > 0")
    require(weight_decay >= 0, "optimizer.weight_decay", weight_decay, "must be >= 0")
    groups = decay_groups(trainable(model), weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, foreach=foreach)
