"""ALLoRA: LoRA without dropout and without the alpha/r scaling, with a per-row adaptive
learning rate (Huang et al., 2024, "ALLoRA: Adaptive Learning Rate Mitigates LoRA Fatal Flaws").

Forward: y = W x + B A x (W frozen, A ~ Kaiming-uniform, B = 0).
Update: the gradient of every row of A and of B is multiplied by
    c_row = 1 / sqrt(||row||^2 + 1 / eta^2),
so rows near zero (B at initialisation) take steps up to `eta` times larger and the step
shrinks as a row grows. Decision: the coefficient is applied to the gradient (a tensor
hook), so any optimizer sees the rescaled gradient; `norm_dim` picks the axis the norm runs
over (1: each output row of B / each rank row of A, as in the paper; 0: columns).
"""

import math

import torch
from torch import nn

from lrlab.adapters.base import Adapter, check_rank, merge_modules, replace_linears, targeted
from lrlab.errors import require


def row_coefficient(factor: torch.Tensor, eta: float, norm_dim: int) -> torch.Tensor:
    """c = 1/sqrt(||row||^2 + 1/eta^2), shaped to broadcast against `factor`."""
    squared = factor.detach().pow(2).sum(dim=norm_dim, keepdim=True)
    return torch.rsqrt(squared + 1.0 / eta**2)


class ALLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, eta: float, norm_dim: int):
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        for factor in (self.lora_A, self.lora_B):
            factor.register_hook(lambda grad, f=factor: grad * row_coefficient(f, eta, norm_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T) @ self.lora_B.T

    def merged(self) -> nn.Linear:
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged.weight.data = self.base.weight.data + self.lora_B.data @ self.lora_A.data
        if self.base.bias is not None:
            merged.bias.data = self.base.bias.data.clone()
        return merged


class ALLoRA(Adapter):
    def __init__(self, target_modules=None, r: int = 8, eta: float = 4.0, norm_dim: int = 1, train_also=None):
        super().__init__(target_modules, train_also)
        require(eta > 0, "adapter.eta", eta, "a positive float")
        require(norm_dim in (0, 1), "adapter.norm_dim", norm_dim, "0 or 1")
        self.r, self.eta, self.norm_dim = r, eta, norm_dim

    def adapt(self, model: nn.Module) -> nn.Module:
        check_rank(targeted(model, self.target_modules), self.r)
        model.requires_grad_(False)
        replace_linears(model, self.target_modules, lambda lin: ALLoRALinear(lin, self.r, self.eta, self.norm_dim))
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return merge_modules(model, ALLoRALinear)
