"""The regularizer protocol.

A regularizer is an `nn.Module` (so its per-sample buffers travel in checkpoints) with a
`weight`. The task calls it every training step:

    term = reg(outputs, batch, task)      # loss += reg.weight * term

`outputs` is a dict: `logits` (B×C), `features` (B×D penultimate features, classifiers),
`loss` (the task's unregularised loss). `batch` is a dict: `y` labels, `index` sample indices
into the training set (and `x` / `input_ids`). A regularizer whose `replaces_loss` is True
returns the whole loss instead of an added term (PS-KD, StableMax, guided distillation).

Optional hooks: `setup(num_samples, num_classes)` before training (allocate per-sample state
with `register_buffer`), `transform_features(features, training)` between a classifier's body
and head (nested dropout), `on_train_epoch_end(task)`.
"""

import torch
from torch import nn


class Regularizer(nn.Module):
    replaces_loss = False

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = float(weight)

    def setup(self, num_samples: int, num_classes: int) -> None:
        """Allocate per-sample state once the training-set size is known."""

    def transform_features(self, features: torch.Tensor, training: bool) -> torch.Tensor:
        return features

    def on_train_epoch_end(self, task) -> None:
        """Called once per epoch, after the last training step."""

    def forward(self, outputs: dict, batch: dict, task) -> torch.Tensor:
        raise NotImplementedError
