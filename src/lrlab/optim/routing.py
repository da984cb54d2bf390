"""Which parameters a projection optimizer projects.

As in the official GaLore/Fira scripts, a parameter is projected when it is the 2-D weight of
an `nn.Linear` whose module name contains one of `target_modules`; embeddings, `lm_head`, norms
and biases always go to plain AdamW inside the same optimizer.
"""

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_TARGETS = ("attn", "mlp")


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def split_params(
    model: nn.Module,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    exclude: Sequence[str] = ("embed", "lm_head", "norm"),
) -> tuple[list[tuple[str, nn.Parameter]], list[tuple[str, nn.Parameter]]]:
    """Return (projected, regular) lists of (name, parameter), trainable parameters only."""
    projected_ids = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or not module.weight.requires_grad:
            continue
        if any(x in module_name for x in exclude):
            continue
        if any(t in module_name for t in target_modules) and module.weight.ndim == 2:
            projected_ids.add(id(module.weight))
    projected, regular = [], []
    for name, p in trainable(model):
        (projected if id(p) in projected_ids else regular).append((name, p))
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
