"""Nested dropout on the penultimate features (Rippel et al. 2014; used against noisy labels by
Chen et al. 2021, "Boosting Co-teaching with Compression Regularization").

In training, keep h[:, :k] and zero the rest, with k drawn from p(k) ∝ exp(−(k/σ)²),
k = 1..D (σ = 10). One k per batch by default (`per_sample: true` draws one per sample). It adds
no loss term. The draws come from a generator seeded by (`seed`, the number of batches drawn so
far), not from the global random stream: under data parallelism every rank draws the global
batch's truncations and keeps its own (the loader deals the global batch round-robin), so any
number of processes trains as one; the count travels in the checkpoint.

Evaluation, as the official code (yingyichen-cyy/Nested-Co-teaching at 4c9b59f,
`nested/train_resnet.py` `TestNested`, `nested/test.py`): the classifier is evaluated with every
truncation k = 1..D on the validation set and the best k is kept, chosen as
argmax_k (acc_k − 1e-5·(k − 1)) (the official tie-break towards fewer features). The callback
`TruncationSweep` logs that accuracy as `val/acc_best_k` (the accuracy itself, without the
1e-5 term the official code also reports) and the k as `val/best_k`; the nested-dropout claims
use them. `val/acc` stays the accuracy with all D features (the official `TestStandard`, used
for models trained without nested dropout). The sweep leaves the run's random stream as it was,
so training is the same with and without it.
"""

import lightning as L
import torch
from torch import nn

from lrlab.callbacks.dynamics import predict
from lrlab.data.loader import _rank_world
from lrlab.errors import require
from lrlab.protocol import Method
from lrlab.tasks.classify import find_head

TIE_BREAK = 1e-5  # the official penalty per extra feature when choosing k


class NestedDropout(Method):
    tasks = ("classify",)

    def __init__(self, sigma: float = 10.0, per_sample: bool = False, seed: int = 0):
        super().__init__()
        require(sigma > 0, "regularizer.nested_dropout.sigma", sigma, "must be > 0")
        self.sigma, self.per_sample, self.seed = sigma, per_sample, int(seed)
        self.batches_drawn = 0

    def get_extra_state(self) -> torch.Tensor:
        return torch.tensor(self.batches_drawn)  # a host count: reading it never waits for a device

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.batches_drawn = int(state)

    def distribution(self, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
        k = torch.arange(1, width + 1, dtype=torch.float64, device=device)
        weights = torch.exp(-((k / self.sigma) ** 2))
        return (weights / weights.sum()).float()

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        """k is drawn on the features' device (its generator), so no value crosses to or from the host."""
        width = features.shape[1]
        rank, world = _rank_world()
        draws = features.shape[0] * world if self.per_sample else 1
        generator = torch.Generator(device=features.device).manual_seed(self.seed * 1_000_003 + self.batches_drawn)
        self.batches_drawn += 1
        keep = torch.multinomial(self.distribution(width, features.device), draws, replacement=True,
                                 generator=generator) + 1
        if self.per_sample:
            keep = keep[rank::world]
        mask = torch.arange(width, device=features.device)[None, :] < keep[:, None]
        return features * mask.to(features.dtype)


@torch.no_grad()
def truncation_accuracies(head: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of `head` on `features` with only the first k kept, for k = 1..D (index k − 1)."""
    width = features.shape[1]
    keep = torch.arange(width, device=features.device)
    return torch.stack([(head(features * (keep < k).to(features.dtype)).argmax(-1) == labels).float().mean()
                        for k in range(1, width + 1)])


def best_truncation(accuracies: torch.Tensor) -> tuple[int, float]:
    """(k, accuracy at k) for the official choice argmax_k (acc_k − 1e-5·(k − 1))."""
    penalised = accuracies.double() - TIE_BREAK * torch.arange(len(accuracies), dtype=torch.float64)
    index = int(penalised.argmax())
    return index + 1, float(accuracies[index])


class TruncationSweep(L.Callback):
    """At every validation: `val/acc_best_k` and `val/best_k` over the truncations of the
    classifier head's input (see the module docstring)."""

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        head = find_head(pl_module.model)
        require(head is not None, "callbacks.truncation_sweep", type(pl_module.model).__name__,
                "a classifier with a `head` module")
        with torch.random.fork_rng(devices=[]):  # the loader's seed draw must not move training's random stream
            out = predict(pl_module, trainer.datamodule.val_set)
        weight = next(head.parameters())
        features, labels = out["features"].to(weight.device, weight.dtype), out["y"].to(weight.device)
        k, accuracy = best_truncation(truncation_accuracies(head, features, labels))
        pl_module.log_dict({"val/acc_best_k": accuracy, "val/best_k": float(k)})
