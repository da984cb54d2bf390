"""PS-KD: Progressive Self-Knowledge Distillation (Kim et al., ICCV 2021), as in the official code.

    α_t = α_T · (epoch + 1) / E
    target_i = (1 − α_t)·onehot(y_i) + α_t·q_i        (q_i: this sample's softmax from the
                                                         previous epoch; onehot(y_i) before)
    loss = mean_i −Σ_c target_ic · log softmax(z_i)_c  (replaces the cross-entropy)

α_T = 0.8. E is the run's number of epochs, derived from max_steps and the epoch length
unless `epochs` is given. Stored predictions are a checkpointed buffer.
"""

import math

import torch
import torch.nn.functional as F

from lrlab.distributed import gather_rows
from lrlab.errors import require
from lrlab.protocol import Loss, weighted_mean


class PSKD(Loss):
    tasks = ("classify",)

    def __init__(self, alpha_T: float = 0.8, epochs: int | None = None):
        super().__init__()
        require(0 <= alpha_T <= 1, "loss.alpha_T", alpha_T, "must be in [0, 1]")
        self.alpha_T, self.epochs = alpha_T, epochs
        self.register_buffer("predictions", torch.zeros(0, 0))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))

    def bind_data(self, num_samples: int, num_classes: int) -> None:
        require(num_samples > 0 and num_classes > 0, "loss", "pskd",
                "needs a classification dataset with a known size")
        self.predictions = torch.zeros(num_samples, num_classes, device=self.predictions.device)
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=self.seen.device)

    def total_epochs(self, task) -> int:
        if self.epochs:
            return self.epochs
        trainer = task.trainer
        return max(1, math.ceil(trainer.max_steps * trainer.accumulate_grad_batches / max(1, trainer.num_training_batches)))

    def alpha(self, epoch: int, total_epochs: int) -> float:
        return self.alpha_T * min(1.0, (epoch + 1) / total_epochs)

    def forward(self, outputs: dict, batch: dict, task, weights: torch.Tensor | None = None) -> torch.Tensor:
        logits, index = outputs["logits"].float(), batch["index"]
        onehot = F.one_hot(batch["y"], logits.shape[1]).float()
        previous = torch.where(self.seen[index, None], self.predictions[index], onehot)
        alpha = self.alpha(task.current_epoch, self.total_epochs(task))
        target = (1 - alpha) * onehot + alpha * previous
        rows = logits.detach().softmax(-1)
        index, rows = gather_rows(index, rows) if logits.requires_grad else (index, rows)  # every rank holds every row
        self.predictions[index] = rows
        self.seen[index] = True
        return weighted_mean(-(target * logits.log_softmax(-1)).sum(1), weights)
