"""SVFit: fine-tune only the top singular values (Sun et al., 2024, "SVFit: Parameter-Efficient
Fine-Tuning of Large Pre-Trained Models Using Singular Values", arXiv 2409.05926).

W = U diag(s) V^T. The top-r triplets, with r the smallest rank whose share of the spectrum
reaches `spectrum` (default 99%), become W_top = U_r diag(s_r) V_r^T with s_r trainable;
U_r, V_r and the residual W - W_top stay frozen. Forward weight: residual + U_r diag(s_r) V_r^T.
Trainable parameters per layer: r.

The share (`measure`): the paper (abstract, arXiv v1; the stored copies of its HTML version
give no more than the abstract and summaries, and no official code was found) keeps "the most
critical singular values that capture over 99% of the matrix's information" and does not say
which sum. `sum`: Σ_{i≤r} s_i / Σ s_i (the nuclear norm's share; the default, as before);
`energy`: Σ_{i≤r} s_i² / Σ s_i² (the squared Frobenius norm's share, the error measure of
the best rank-r approximation). `energy` keeps fewer values.
"""

import torch
from torch import nn

from lrlab.adapters.base import Adapter, merge_modules, replace_linears
from lrlab.errors import require


MEASURES = ("sum", "energy")


def rank_for_spectrum(singular_values: torch.Tensor, spectrum: float, measure: str = "sum") -> int:
    """The smallest r whose top-r share of Σ s (`sum`) or Σ s² (`energy`) reaches `spectrum`."""
    weights = singular_values if measure == "sum" else singular_values.pow(2)
    cumulative = torch.cumsum(weights, 0) / weights.sum()
    return int(torch.searchsorted(cumulative, torch.tensor(spectrum, dtype=cumulative.dtype)).item()) + 1


class SVFitLinear(nn.Module):
    def __init__(self, base: nn.Linear, spectrum: float, measure: str = "sum"):
        super().__init__()
        weight = base.weight.detach().float()
        u, s, vh = torch.linalg.svd(weight, full_matrices=False)
        r = min(rank_for_spectrum(s, spectrum, measure), s.numel())
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
    def __init__(self, target_modules=None, spectrum: float = 0.99, measure: str = "sum", train_also=None):
        super().__init__(target_modules, train_also)
        require(0 < spectrum <= 1, "adapter.spectrum", spectrum, "a fraction in (0, 1]")
        require(measure in MEASURES, "adapter.measure", measure, " or ".join(MEASURES))
        self.spectrum, self.measure = spectrum, measure

    def adapt(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        replace_linears(model, self.target_modules, lambda lin: SVFitLinear(lin, self.spectrum, self.measure))
        return model

    def export(self, model: nn.Module) -> nn.Module:
        return merge_modules(model, SVFitLinear)
