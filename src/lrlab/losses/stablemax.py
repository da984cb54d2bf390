"""StableMax cross-entropy (Prieto et al. 2025, "Grokking at the Edge of Numerical Stability"),
as in the official code (`utils.py`: `stablemax_cross_entropy` casts the logits to float64 and
returns the float64 mean): computed in float64 and used as the loss.

    s(x) = x + 1 for x ≥ 0,  1 / (1 − x) for x < 0;   p_c = s(z_c) / Σ_k s(z_k)
    loss = mean_i −log p_{i, y_i}

Unlike softmax, s grows linearly, so confident predictions do not round gradients to zero
(Softmax Collapse). The loss stays float64 (never cast back to the logits' dtype: under bf16
autocast that cast would round it to 8 mantissa bits, the imprecision StableMax exists to
avoid); the gradient reaches the logits in their own dtype. Classification only.
"""

import torch

from lrlab.protocol import Loss, weighted_mean


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x + 1, 1 / (1 - torch.clamp(x, max=0)))


def log_stablemax(logits: torch.Tensor) -> torch.Tensor:
    s = stablemax_s(logits.double())
    return torch.log(s / s.sum(-1, keepdim=True))


class StableMaxCE(Loss):
    tasks = ("classify",)

    def forward(self, outputs: dict, batch: dict, task, weights: torch.Tensor | None = None) -> torch.Tensor:
        per_sample = -log_stablemax(outputs["logits"]).gather(1, batch["y"][:, None])[:, 0]
        return weighted_mean(per_sample, weights)
