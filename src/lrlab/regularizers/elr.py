"""ELR: Early-Learning Regularization (Liu et al., NeurIPS 2020, "Early-Learning Regularization
Prevents Memorization of Noisy Labels"), as in the official code.

    p_i = clamp(softmax(z_i), 1e-4, 1 − 1e-4)
    t_i ← β·t_i + (1 − β)·p̂_i / Σ p̂_i        (p̂ detached; t is a per-sample running target)
    term = mean_i log(1 − ⟨p_i, t_i⟩)          (loss = CE + λ·term; λ = weight)

Defaults β = 0.7, λ = 3 (CIFAR-10 symmetric noise). The targets are a buffer indexed by the
batch's sample indices, so they are checkpointed and restored exactly. Under DDP each rank
updates the rows of its own samples; the checkpoint holds rank 0's copy.
"""

import torch

from lrlab.distributed import gather_rows
from lrlab.errors import require
from lrlab.protocol import Method


class ELR(Method):
    tasks = ("classify",)

    def __init__(self, weight: float = 3.0, beta: float = 0.7):
        super().__init__()
        require(0 <= beta < 1, "regularizer.elr.beta", beta, "must be in [0, 1)")
        self.weight, self.beta = float(weight), beta
        self.register_buffer("targets", torch.zeros(0, 0))

    def bind_data(self, num_samples: int, num_classes: int) -> None:
        require(num_samples > 0 and num_classes > 0, "regularizer", "elr",
                "needs a classification dataset with a known size")
        self.targets = torch.zeros(num_samples, num_classes, device=self.targets.device)

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor:
        probs = outputs["logits"].float().softmax(-1).clamp(1e-4, 1 - 1e-4)
        index = batch["index"]
        seen = probs.detach()
        rows = self.beta * self.targets[index] + (1 - self.beta) * seen / seen.sum(1, keepdim=True)
        self.targets[index] = rows
        if probs.requires_grad:  # training: every rank writes every rank's rows, so that all hold the single-process targets
            every_index, every_row = gather_rows(index, rows)
            self.targets[every_index] = every_row
        return self.weight * torch.log(1 - (self.targets[index] * probs).sum(1)).mean()
