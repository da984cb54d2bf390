"""ALLoRA: LoRA without dropout and without the alpha/r scaling, with an adaptive learning rate
inversely proportional to the adapter's norm (Huang & Balestriero, 2024, "ALLoRA: Adaptive
Learning Rate Mitigates LoRA Fatal Flaws", arXiv 2410.09692).

Forward: y = W x + B A x (W frozen, A ~ Kaiming-uniform, B = 0).

What was read where: no official code exists. The stored copies of the paper (arXiv v1 and its
HTML version; no later version was found) give the abstract ("scaling the per sample and per
parameter gradients with a coefficient inversely proportional to parameters' ℓ2 norm") but not
the text of §4.2. The equation and η follow the reading of §4.2 and Table 1 recorded in this
project's fidelity review (issue 13), from a re-implementation that cites §4.2:

- `form: output_rows` (default, that reading): the gradient of the adapter's output
  z = B A x is scaled per output row i before the gradients of A and B are formed,
      g̃_i = g_i / sqrt(‖(BA)_i,:‖ + 1/η²)        (un-squared row norm of the product BA),
  so dB = g̃ (A x)ᵀ and dA = Bᵀ g̃ xᵀ (a custom autograd function on z). At BA = 0 (B at
  initialisation) every row is scaled by η; the coefficient shrinks as a row of BA grows.
- `form: factor_rows` (the earlier lrlab reading, kept as an option): the gradient of every
  row of A and of B is multiplied by 1/sqrt(‖row‖² + 1/η²) (squared norm of the factor's own
  row; `norm_dim` 1: rows, 0: columns), as a tensor hook on each factor.

η: Table 1 sweeps η² ∈ {1, 2, 4}; `eta_squared` takes η² (default 4, the largest, whose
coefficient at BA = 0 is η = 2). The earlier default, η = 4, is `eta_squared: 16`.
Either form acts on the gradient, so any optimizer sees the rescaled gradient (Adam's
normalisation cancels much of a slowly varying scale; SGD sees it in full).
"""

import math

import torch
from torch import nn

from lrlab.adapters.base import Adapter, check_rank, merge_modules, replace_linears, targeted
from lrlab.errors import require

FORMS = ("output_rows", "factor_rows")


def row_coefficient(factor: torch.Tensor, eta: float, norm_dim: int) -> torch.Tensor:
    """`factor_rows`: c = 1/sqrt(‖row‖² + 1/η²), shaped to broadcast against `factor`."""
    squared = factor.detach().pow(2).sum(dim=norm_dim, keepdim=True)
    return torch.rsqrt(squared + 1.0 / eta**2)


def output_row_coefficient(lora_A: torch.Tensor, lora_B: torch.Tensor, eta_squared: float) -> torch.Tensor:
    """`output_rows`: c_i = 1/sqrt(‖(BA)_i,:‖ + 1/η²), one per output feature; ‖(BA)_i‖² is
    b_i (A Aᵀ) b_iᵀ, formed without the out × in product."""
    a, b = lora_A.detach(), lora_B.detach()
    squared = ((b @ (a @ a.T)) * b).sum(1).clamp_min(0)
    return torch.rsqrt(squared.sqrt() + 1.0 / eta_squared)


class _ScaleOutputGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient of each output feature by `coefficient`."""

    @staticmethod
    def forward(ctx, output: torch.Tensor, coefficient: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(coefficient)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (coefficient,) = ctx.saved_tensors
        return grad * coefficient.to(grad.dtype), None


class ALLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, eta_squared: float, form: str, norm_dim: int):
        super().__init__()
        self.base, self.eta_squared, self.form = base, eta_squared, form
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        if form == "factor_rows":
            eta = math.sqrt(eta_squared)
            for factor in (self.lora_A, self.lora_B):
                factor.register_hook(lambda grad, f=factor: grad * row_coefficient(f, eta, norm_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = (x @ self.lora_A.T) @ self.lora_B.T
        if self.form == "output_rows" and update.requires_grad:
            update = _ScaleOutputGradient.apply(update, output_row_coefficient(self.lora_A, self.lora_B,
                                                                               self.eta_squared))
        return self.base(x) + update

    def merged(self) -> nn.Linear:
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged.weight.data = self.base.weight.data + self.lora_B.data @ self.lora_A.data
        if self.base.bias is not None:
            merged.bias.data = self.base.bias.data.clone()
        return merged


class ALLoRA(Adapter):
    def __init__(self, target_modules=None, r: int = 8, eta_squared: float = 4.0, form: str = "output_rows",
                 norm_dim: int = 1, train_also=None):
        super().__init__(target_modules, train_also)
        require(eta_squared > 0, "adapter.eta_squared", eta_squared, "a positive float (the paper sweeps 1, 2, 4)")
        require(form in FORMS, "adapter.form", form, " or ".join(FORMS))
        require(norm_dim in (0, 1), "adapter.norm_dim", norm_dim, "0 or 1")
        self.r, self.eta_squared, self.form, self.norm_dim = r, eta_squared, form, norm_dim

    def adapt(self, model: nn.Module) -> nn.Module:
        check_rank(targeted(model, self.target_modules), self.r)
        model.requires_grad_(False)
        replace_linears(model, self.target_modules,
                        lambda lin: ALLoRALinear(lin, self.r, self.eta_squared, self.form, self.norm_dim))
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return merge_modules(model, ALLoRALinear)
