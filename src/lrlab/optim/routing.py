"""Which parameters a projection optimizer projects.

As in the official GaLore/Fira scripts, a parameter is projected when it is a 2-D weight (both
sides > 1) whose name contains one of `target_modules` and none of `exclude`: the weights of the
attention and MLP linears, also when a reparametrisation holds them (weight norm's direction
`...q_proj.parametrizations.weight.original1`; its m×1 magnitude is not projected). Embeddings,
`lm_head`, norms and biases always go to plain AdamW inside the same optimizer.
"""

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_TARGETS = ("attn", "mlp")
DEFAULT_EXCLUDE = ("embed", "lm_head", "norm")


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def is_projected(name: str, param: torch.Tensor, target_modules: Sequence[str] | None, exclude: Sequence[str]) -> bool:
    return (param.ndim == 2 and min(param.shape) > 1 and (target_modules is None or any(t in name for t in target_modules))
            and not any(x in name for x in exclude))


def split_params(
    model: nn.Module,
    target_modules: Sequence[str] | None = DEFAULT_TARGETS,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Return (projected, regular) lists of (name, parameter), trainable parameters only;
    `target_modules=None` projects every eligible matrix."""
    projected, regular = [], []
    for name, p in trainable(model):
        (projected if is_projected(name, p, target_modules, exclude) else regular).append((name, p))
    return projected, regular


def decay_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Plain param groups: no weight decay on biases and norm weights (1-D tensors)."""
    decay = [p for _, p in named if p.ndim >= 2]
    no_decay = [p for _, p in named if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def lowrank_param_groups(model: nn.Module, rank: int, update_proj_gap: int = 200, scale: float = 0.25,
                         target_modules: Sequence[str] | None = None, exclude: Sequence[str] = DEFAULT_EXCLUDE,
                         weight_decay: float = 0.0, **projected) -> list[dict]:
    """Param groups for `LowRankAdamW` from any module: one projected group (rank, gap, scale and
    any other projected setting, e.g. `proj_type`, `residual`, `basis`) holding its matrices, then
    the dense groups (no weight decay on 1-D tensors). `target_modules=None` projects every 2-D
    weight with both sides > 1 outside `exclude` (embeddings, lm_head, norms); the official GaLore
    scripts project the attention and MLP linears, `target_modules=("attn", "mlp")`."""
    matrices, regular = split_params(model, target_modules, exclude)
    if not matrices:
        raise ValueError(f"no trainable matrix of {type(model).__name__} matches target_modules={target_modules}")
    group = {"params": [p for _, p in matrices], "rank": rank, "update_proj_gap": update_proj_gap, "scale": scale,
             "weight_decay": weight_decay, **projected}
    return [group, *decay_groups(regular, weight_decay)]


def evaluate_closure(closure):
    """Run an optimizer's closure (re-evaluating the loss) with gradients on; None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
