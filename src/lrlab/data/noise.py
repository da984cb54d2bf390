"""Synthetic label noise for classification data (the clean labels are kept for measurement).

symmetric: with probability `rate` a label is replaced by a uniformly drawn *different* class.
asymmetric: with probability `rate` class c is flipped to (c + 1) mod C (pair flipping).
"""

import torch

from lrlab.errors import require

KINDS = ("none", "symmetric", "asymmetric")


def corrupt(labels: torch.Tensor, num_classes: int, kind: str = "none", rate: float = 0.0,
            seed: int = 0) -> torch.Tensor:
    require(kind in KINDS, "data.noise.kind", kind, f"one of {', '.join(KINDS)}")
    require(0.0 <= rate < 1.0, "data.noise.rate", rate, "must be in [0, 1)")
    if kind == "none" or rate == 0:
        return labels.clone()
    gen = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(labels), generator=gen) < rate
    if kind == "symmetric":
        offset = torch.randint(1, num_classes, (len(labels),), generator=gen)
    else:
        offset = torch.ones(len(labels), dtype=torch.long)
    return torch.where(flip, (labels + offset) % num_classes, labels)
