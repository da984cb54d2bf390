"""AdamW (Loshchilov & Hutter 2019): torch's implementation, no decay on 1-D parameters.

`matrix_lr_scale` multiplies the lr of the attention/MLP matrices that the projection
optimizers would project (same routing, `lrlab.optim.routing.split_params`); 1.0 is plain
AdamW. It is the full-rank control for GaLore's `scale`, which gives those matrices an
effective lr of lr × scale while embeddings and lm_head train at lr.
"""

import torch
from torch import nn

from lrlab.errors import require
from lrlab.optim.routing import DEFAULT_TARGETS, decay_groups, split_params, trainable


def build(model: nn.Module, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 0.0, foreach: bool | None = None, matrix_lr_scale: float = 1.0,
          target_modules=DEFAULT_TARGETS) -> torch.optim.Optimizer:
    require(lr > 0, "optimizer.lr", lr, "must be > 0")
    require(weight_decay >= 0, "optimizer.weight_decay", weight_decay, "must be >= 0")
    require(matrix_lr_scale > 0, "optimizer.matrix_lr_scale", matrix_lr_scale, "must be > 0")
    if matrix_lr_scale == 1.0:
        groups = decay_groups(trainable(model), weight_decay)
    else:
        matrices, rest = split_params(model, target_modules)
        require(bool(matrices), "optimizer.target_modules", list(target_modules),
                "match no 2-D linear weight of this model")
        scaled = {"params": [p for _, p in matrices], "weight_decay": weight_decay, "lr": lr * matrix_lr_scale}
        groups = [scaled, *decay_groups(rest, weight_decay)]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, foreach=foreach)
