"""⊥Grad (Prieto et al. 2025, "Grokking at the Edge of Numerical Stability"): wrap any optimizer
so that each parameter's gradient loses its component along the weight, keeping its norm:

    g⊥ = g − (⟨w, g⟩ / (⟨w, w⟩ + 1e-30))·w;    g ← g⊥ · ‖g‖ / (‖g⊥‖ + 1e-30)

The base optimizer shares this optimizer's param groups (so lr schedules reach it) and state.
"""

import torch
from torch import nn

from lrlab.errors import require
from lrlab.optim.routing import decay_groups, evaluate_closure, trainable

BASES = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def orthogonalize(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    w, g = weight.flatten().double(), grad.flatten().double()
    projected = g - (w @ g) / (w @ w + 1e-30) * w
    rescaled = projected * (g.norm() / (projected.norm() + 1e-30))
    return rescaled.view_as(grad).to(grad.dtype)


class OrthoGrad(torch.optim.Optimizer):
    def __init__(self, params, base_cls=torch.optim.AdamW, **base_kwargs):
        super().__init__(params, {})
        self.base = base_cls(self.param_groups, **base_kwargs)
        self.state = self.base.state
        self.defaults = self.base.defaults

    @torch.no_grad()
    def step(self, closure=None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.copy_(orthogonalize(p, p.grad))
        self.base.step()
        return loss

    def state_dict(self):
        return self.base.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.base.load_state_dict(state_dict)
        self.state = self.base.state


def build(model: nn.Module, base: str = "adamw", lr: float = 1e-3, weight_decay: float = 0.0,
          **base_kwargs) -> OrthoGrad:
    require(base in BASES, "optimizer.base", base, f"one of {', '.join(BASES)}")
    require(lr > 0, "optimizer.lr", lr, "must be > 0")
    if "betas" in base_kwargs:
        base_kwargs["betas"] = tuple(base_kwargs["betas"])
    return OrthoGrad(decay_groups(trainable(model), weight_decay), BASES[base], lr=lr, **base_kwargs)
