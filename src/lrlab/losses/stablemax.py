"""StableMax cross-entropy (Prieto et al. 2025, "Grokking at the Edge of Numerical Stability"),
as in the official code: computed in float64 and used as the loss.

    s(x) = x + 1 for x ≥ 0,  1 / (1 − x) for x < 0;   p_c = s(z_c) / Σ_k s(z_k)
    loss = mean_i −log p_{i, y_i}

Unlike softmax, s grows linearly, so confident predictions do not round gradients to zero
(Softmax Collapse).
"""

import torch

from lrlab.regularizers.base import Regularizer


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x + 1, 1 / (1 - torch.clamp(x, max=0)))


def log_stablemax(logits: torch.Tensor) -> torch.Tensor:
    s = stablemax_s(logits.double())
    return torch.log(s / s.sum(-1, keepdim=True))


class StableMaxCE(Regularizer):
    replaces_loss = True

    def forward(self, outputs: dict, batch: dict, task) -> torch.Tensor:
        logp = log_stablemax(outputs["logits"])
        return -logp.gather(1, batch["y"][:, None]).mean().to(outputs["logits"].dtype)
