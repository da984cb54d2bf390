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


def is_projected(name: str, param: torch.Tensor, target_modules: Sequence[str], exclude: Sequence[str]) -> bool:
    return (param.ndim == 2 and min(param.shape) > 1 and any(t in name for t in target_modules)
            and not any(x in name for x in exclude))


def split_params(
    model: nn.Module,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Return (projected, regular) lists of (name, parameter), trainable parameters only."""
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


def state_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, list[int]]:
    """Exact optimizer-state bytes: total and per param group, summed over state tensors."""
    by_group = []
    for group in optimizer.param_groups:
        n = 0
        for p in group["params"]:
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value):
                    n += value.numel() * value.element_size()
        by_group.append(n)
    return sum(by_group), by_group


def evaluate_closure(closure):
    """Run an optimizer's closure (re-evaluating the loss) with gradients on; None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
