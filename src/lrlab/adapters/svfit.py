"""SVFit: fine-tune only the top singular values (Sun et al., 2024, "SVFit").

W = U diag(s) V^T. The top-r triplets, with r the smallest rank whose singular values sum to
`spectrum` (default 99%) of the total, become W_top = U_r diag(s_r) V_r^T with s_r trainable;
U_r, V_r and the residual W - W_top stay frozen. Forward weight: residual + U_r diag(s_r) V_r^T.
Trainable parameters per layer: r.
"""

import torch
from torch import nn

from lrlab.adapters.base import Adapter, merge_modules, replace_linears
from lrlab.errors import require


def rank_for_spectrum(singular_values: torch.Tensor, spectrum: float) -> int:
    cumulative = torch.cumsum(singular_values, 0) / singular_values.sum()
    return int(torch.searchsorted(cumulative, torch.tensor(spectrum, dtype=cumulative.dtype)).item()) + 1


class SVFitLinear(nn.Module):
    def __init__(self, base: nn.Linear, spectrum: float):
        super().__init__()
        weight = base.weight.detach().float()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        r = min(rank_for_spectrum(s, spectrum), s.numel())
        self.register_buffer("u", u[:, :r].contiguous())
        self.register_buffer("vh", vh[:r].contiguous())
        self.register_buffer("residual", weight - (u[:, :r] * s[:r]) @ vh[:r])
        self.singular_values = nn.Parameter(s[:r].clone())
        self.bias = None if base.bias is None else nn.Parameter(base.bias.detach().clone(), requires_grad=False)

    def weight(self) -> torch.Tensor:
        return self.residual + (self.u * self.singular_values) @ self.vh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight(), self.bias)

    def merged(self) -> nn.Linear:
        merged = nn.Linear(self.vh.shape[1], self.u.shape[0], bias=self.bias is not None)
        merged.weight.data = self.weight().detach()
        if self.bias is not None:
            merged.bias.data = self.bias.data.clone()
        return merged


class SVFit(Adapter):
    def __init__(self, target_modules=None, spectrum: float = 0.99, train_also=None):
        super().__init__(target_modules, train_also)
        require(0 < spectrum <= 1, "adapter.spectrum", spectrum, "a fraction in (0, 1]")
        self.spectrum = spectrum

    def adapt(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        replace_linears(model, self.target_modules, lambda lin: SVFitLinear(lin, self.spectrum))
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return merge_modules(model, SVFitLinear)
