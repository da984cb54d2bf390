"""Nested dropout on the penultimate features (Rippel et al. 2014; used against noisy labels by
Chen et al. 2021, "Boosting Co-teaching with Compression Regularization").

In training, keep h[:, :k] and zero the rest, with k drawn from p(k) ∝ exp(−(k/σ)²),
k = 1..D (σ = 10); evaluation uses all features. One k per batch by default
(`per_sample: true` draws one per sample). It adds no loss term.
"""

import torch

from lrlab.errors import require
from lrlab.protocol import Method


class NestedDropout(Method):
    tasks = ("classify",)

    def __init__(self, sigma: float = 10.0, per_sample: bool = False):
        super().__init__()
        require(sigma > 0, "regularizer.nested_dropout.sigma", sigma, "must be > 0")
        self.sigma, self.per_sample = sigma, per_sample

    def distribution(self, width: int) -> torch.Tensor:
        k = torch.arange(1, width + 1, dtype=torch.float64)
        weights = torch.exp(-((k / self.sigma) ** 2))
        return (weights / weights.sum()).float()

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        width = features.shape[1]
        draws = features.shape[0] if self.per_sample else 1
        keep = torch.multinomial(self.distribution(width), draws, replacement=True).to(features.device) + 1
        mask = torch.arange(width, device=features.device)[None, :] < keep[:, None]
        return features * mask.to(features.dtype)
