"""Nuclear-norm regularizer (as in TRP, Xu et al. 2019): term = Σ_W ‖W‖_*, over 2-D linear
weights and conv kernels reshaped to out × (in·k·k).

Its gradient is the sub-gradient U·Vᵀ of each weight's SVD, which TRP adds (× λ = 3e-4) to
the weight gradient; here autograd produces it from the summed singular values. `every` > 1
applies it on every n-th step only (the term is 0 otherwise), to bound the SVD cost.
"""

import torch
from torch import nn

from lrlab.errors import require
from lrlab.protocol import Method


def nuclear_norms(model: nn.Module) -> list[torch.Tensor]:
    """‖W‖_* of each weight; weights of one shape share one batched SVD (one call, on a GPU one
    wait for its convergence check, per shape rather than per weight)."""
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and module.weight.requires_grad:
            weight = module.weight.flatten(1) if module.weight.ndim > 2 else module.weight
            by_shape.setdefault(tuple(weight.shape), []).append(weight.float())
    return [norm for weights in by_shape.values() for norm in torch.linalg.svdvals(torch.stack(weights)).sum(-1)]


class NuclearNorm(Method):
    shardable = False  # FSDP2: a whole-weight SVD in its loss term
    def __init__(self, weight: float = 3e-4, every: int = 1):
        super().__init__()
        require(isinstance(every, int) and every >= 1, "regularizer.nuclear.every", every, "must be an integer >= 1")
        self.weight, self.every = float(weight), every

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor | None:
        if task.global_step % self.every:
            return None
        norms = nuclear_norms(task.model)
        return self.weight * torch.stack(norms).sum() if norms else None
