"""Self-distillation guided by the ground truth ("Even your Teacher Needs Guidance",
Jain et al. 2024): the student's target mixes the label with the teacher's prediction,

    target_i = α·onehot(y_i) + (1 − α)·softmax(teacher_i / τ)
    loss = mean_i −Σ_c target_ic · log softmax(z_i)_c          (replaces the cross-entropy)

α > 0 prevents the collapse that pure self-distillation (α = 0) shows. Teacher here: the
model's own prediction for the sample from the previous epoch (a checkpointed buffer) — the
single-run form of self-distillation; before a sample's first visit the target is the label.
"""

import torch
import torch.nn.functional as F

from lrlab.distributed import gather_rows
from lrlab.errors import require
from lrlab.protocol import Loss, weighted_mean


class GuidedSelfDistillation(Loss):
    tasks = ("classify",)

    def __init__(self, alpha: float = 0.5, temperature: float = 1.0):
        super().__init__()
        require(0 <= alpha <= 1, "loss.alpha", alpha, "must be in [0, 1]")
        require(temperature > 0, "loss.temperature", temperature, "must be > 0")
        self.alpha, self.temperature = alpha, temperature
        self.register_buffer("teacher", torch.zeros(0, 0))
        self.register_buffer("seen", torch.zeros(0, dtype=torch.bool))

    def bind_data(self, num_samples: int, num_classes: int) -> None:
        self.teacher = torch.zeros(num_samples, num_classes, device=self.teacher.device)
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=self.seen.device)

    def target(self, labels: torch.Tensor, teacher_probs: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
        onehot = F.one_hot(labels, teacher_probs.shape[1]).float()
        mixed = self.alpha * onehot + (1 - self.alpha) * teacher_probs
        return torch.where(seen[:, None], mixed, onehot)

    def forward(self, outputs: dict, batch: dict, task, weights: torch.Tensor | None = None) -> torch.Tensor:
        logits, index = outputs["logits"].float(), batch["index"]
        target = self.target(batch["y"], self.teacher[index], self.seen[index])
        rows = (logits.detach() / self.temperature).softmax(-1)
        index, rows = gather_rows(index, rows) if logits.requires_grad else (index, rows)
        self.teacher[index] = rows
        self.seen[index] = True
        return weighted_mean(-(target * logits.log_softmax(-1)).sum(1), weights)
