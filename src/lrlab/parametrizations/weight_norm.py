"""Weight norm per output row, GradNormLoRP's reparametrisation (Huang et al. 2024, "Gradient
Weight-normalized Low-rank Projection", arXiv 2412.19616).

Each targeted linear weight becomes W = g ⊙ V/‖V‖ (row norms; torch's `weight_norm`, dim 0),
which leaves the function unchanged at the start. V (m×n, `...parametrizations.weight.original1`)
and g (m×1, `...original0`) train; composed with `optimizer=galore`, the projection routing
(`lrlab.optim.routing`) projects V, whose gradient is G·g/‖V‖ minus its radial part, and gives g
(an m×1 matrix, never projected) full Adam in the same optimizer: GradNormLoRP's update.

`export` folds g and V back into a plain weight (`remove_parametrizations`), the same function.
"""

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from lrlab.errors import require
from lrlab.protocol import Method


class WeightNorm(Method):
    def __init__(self, target_modules=("attn", "mlp"), exclude=("embed", "lm_head", "norm")):
        super().__init__()
        self.target_modules, self.exclude = list(target_modules), list(exclude)

    def targets(self, model: nn.Module) -> list[nn.Linear]:
        return [module for name, module in model.named_modules()
                if isinstance(module, nn.Linear) and any(t in name for t in self.target_modules)
                and not any(x in name for x in self.exclude)]

    def transform_model(self, model: nn.Module) -> nn.Module:
        linears = self.targets(model)
        require(bool(linears), "parametrization.target_modules", self.target_modules,
                "match no linear layer of this model")
        for module in linears:
            weight_norm(module, name="weight", dim=0)
        return model

    def export(self, model: nn.Module) -> nn.Module:
        for module in model.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight")
        return model
