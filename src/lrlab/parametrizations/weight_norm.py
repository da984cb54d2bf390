"""Weight norm per output row, GradNormLoRP's reparametrisation (Huang et al. 2024, "Gradient
Weight-normalized Low-rank Projection", arXiv 2412.19616).

Each targeted linear weight becomes W = g ⊙ V/‖V‖ (row norms, dim 0), which leaves the function
unchanged at the start. V (m×n, `...parametrizations.weight.original1`) and g (m×1,
`...original0`) train; composed with `optimizer=galore`, the projection routing
(`lrlab.optim.routing`) projects V and gives g (an m×1 matrix, never projected) full Adam in the
same optimizer: GradNormLoRP's update.

V's gradient, `radial`:
- `true` (default): the exact chain rule, ∇V = (g/‖V‖)·(G − (G·V̂)V̂) per row with V̂ = V/‖V‖
  (torch's `weight_norm`; the radial part, along V, is removed).
- `false`: the official code's form, ∇V = G·g/‖V‖ (the radial term dropped), read in
  Jhhuangkay/Gradient-Weight-normalized-Low-rank-Projection-for-Efficient-LLM-Training,
  `GradNormLoRP/LowRankWeightNormAdamW.py` (`grad_v = grad * state['g'] / norm_v`), the
  optimizer its `test_train.py --optimizer lowrank` and `test_fine.py` build. The forward and
  g's gradient, Σ_j G_ij V̂_ij, are the same in both. (That file also resets g to ‖V‖ at the
  start of every step, so there W = V at each step and G·g/‖V‖ = G; here g stays a trained
  parameter, the paper's W = g·V/‖V‖.)

`export` folds g and V back into a plain weight (`remove_parametrizations`), the same function.
"""

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from lrlab.errors import require
from lrlab.protocol import Method


class _NoRadialWeightNorm(torch.autograd.Function):
    """W = g·V/‖V‖ (rows); backward: ∇V = G·g/‖V‖, ∇g = Σ_j G_ij V_ij/‖V_i‖."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        norm = torch.norm_except_dim(v, 2, 0)
        ctx.save_for_backward(g, v, norm)
        return g * (v / norm)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g, v, norm = ctx.saved_tensors
        grad_g = (grad * (v / norm)).flatten(1).sum(1).reshape(g.shape)
        return grad_g, grad * (g / norm)


class NoRadialWeightNorm(nn.Module):
    """A weight-norm parametrization (`original0` = g, `original1` = V) without the radial term."""

    def forward(self, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _NoRadialWeightNorm.apply(g, v)

    def right_inverse(self, weight: torch.Tensor):
        return torch.norm_except_dim(weight, 2, 0), weight


class WeightNorm(Method):
    def __init__(self, target_modules=("attn", "mlp"), exclude=("embed", "lm_head", "norm"), radial: bool = True):
        super().__init__()
        self.target_modules, self.exclude, self.radial = list(target_modules), list(exclude), bool(radial)

    def targets(self, model: nn.Module) -> list[nn.Linear]:
        return [module for name, module in model.named_modules()
                if isinstance(module, nn.Linear) and any(t in name for t in self.target_modules)
                and not any(x in name for x in self.exclude)]

    def transform_model(self, model: nn.Module) -> nn.Module:
        linears = self.targets(model)
        require(bool(linears), "parametrization.target_modules", self.target_modules,
                "match no linear layer of this model")
        for module in linears:
            if self.radial:
                weight_norm(module, name="weight", dim=0)
            else:
                parametrize.register_parametrization(module, "weight", NoRadialWeightNorm(), unsafe=True)
        return model

    def export(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight")
        return model
