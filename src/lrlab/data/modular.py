"""Modular arithmetic (grokking tasks): all pairs (a, b) with a, b in [0, p), label (a ∘ b) mod p.

The input is the concatenation of the two one-hot vectors (2p floats), so the `mlp` model
reads it directly. A seeded `train_fraction` of the p² pairs trains; the rest validates.
Like every classification module it takes `noise` ({kind, rate, seed}) for the training labels.
"""

import torch

from lrlab.data.base import BaseDataModule
from lrlab.data.images import TensorClassification
from lrlab.data.noise import corrupt
from lrlab.errors import require

OPS = {"add": lambda a, b, p: (a + b) % p, "sub": lambda a, b, p: (a - b) % p, "mul": lambda a, b, p: (a * b) % p}


class ModularArithmetic(BaseDataModule):
    def __init__(self, p: int = 97, op: str = "add", train_fraction: float = 0.4, noise: dict | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        require(isinstance(p, int) and p >= 2, "data.p", p, "must be an integer >= 2")
        require(op in OPS, "data.op", op, f"one of {', '.join(OPS)}")
        require(0 < train_fraction < 1, "data.train_fraction", train_fraction, "must be in (0, 1)")
        self.p, self.op, self.train_fraction = p, op, train_fraction
        self.num_classes = p
        self.noise = dict(noise or {})  # corrupt()'s defaults: no noise

    def build(self):
        a, b = torch.meshgrid(torch.arange(self.p), torch.arange(self.p), indexing="ij")
        a, b = a.flatten(), b.flatten()
        x = torch.cat([torch.nn.functional.one_hot(a, self.p), torch.nn.functional.one_hot(b, self.p)], 1).float()
        y = OPS[self.op](a, b, self.p)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        cut = int(round(self.train_fraction * len(y)))
        train, val = order[:cut], order[cut:]
        noisy = corrupt(y[train], self.p, **self.noise)
        return TensorClassification(x[train], noisy, y[train]), TensorClassification(x[val], y[val], y[val])
