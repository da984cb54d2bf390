"""GradNormLoRP (Huang et al. 2024, arXiv 2412.19616): weight-normalised low-rank projection.

Each targeted weight is reparametrised per output row as W = g ⊙ V/‖V‖ (torch's
`weight_norm`, dim 0), leaving the function unchanged. The direction V (m×n) is trained by the
low-rank projected Adam (its gradient, G·g/‖V‖ minus its radial part, goes through the
projector); the magnitude g (m×1, gradient = row-sum of G ⊙ V/‖V‖) gets full Adam, like every
other parameter, in the same optimizer.

The reparametrisation happens when the optimizer is built (idempotent), which the runner does
before it restores a checkpoint, so parametrised weights resume like any other.
"""

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from lrlab.errors import require
from lrlab.optim import lowrank_adam
from lrlab.optim.routing import decay_groups


def normalise_weights(model: nn.Module, target_modules, exclude) -> list[nn.Parameter]:
    """Apply weight norm to the targeted linears; return their direction parameters V."""
    directions = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or any(x in name for x in exclude):
            continue
        if not any(t in name for t in target_modules):
            continue
        if not parametrize.is_parametrized(module, "weight"):
            weight_norm(module, name="weight", dim=0)
        directions.append(module.parametrizations.weight.original1)
    return directions


def build(model: nn.Module, lr: float = 0.01, rank: int = 8, update_proj_gap: int = 200, scale: float = 0.25,
          target_modules=("attn", "mlp"), exclude=("embed", "lm_head", "norm"), weight_decay: float = 0.0,
          betas=(0.9, 0.999), eps: float = 1e-6, **projection) -> lowrank_adam.LowRankAdamW:
    require(lr > 0, "optimizer.lr", lr, "must be > 0")
    require(isinstance(rank, int) and rank > 0, "optimizer.rank", rank, "must be a positive integer")
    directions = normalise_weights(model, target_modules, exclude)
    require(bool(directions), "optimizer.target_modules", list(target_modules), "match no linear layer of this model")
    smallest = min(min(v.shape) for v in directions)
    require(rank <= smallest, "optimizer.rank", rank, f"must be <= {smallest}, the smallest projected side")
    direction_ids = {id(v) for v in directions}
    rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in direction_ids]
    projected = {"params": directions, "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale, **projection}
    return lowrank_adam.LowRankAdamW([projected, *decay_groups(rest, weight_decay)], lr=lr, betas=betas, eps=eps,
                                     weight_decay=weight_decay)
