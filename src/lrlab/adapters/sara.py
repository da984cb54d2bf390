"""SaRA: fine-tune the small ("ineffective") pre-trained weights (Hu et al., 2024, "SaRA:
High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation",
arXiv 2409.06633). Official code read: sjtuplayer/SaRA at ea21192, `optim/adamw.py` (the
default, "unstructural backpropagation") and `optim/adamw2.py` (`--disable_ub`),
`examples/finetune.py`, `finetune.sh` / readme (threshold 2e-3, progressive_iter 2500 of 5005
steps, lambda_rank 5e-4).

Mask: entries of each target weight with |w| < `threshold`. Only they move: the weight's
gradient is multiplied by the mask (a tensor hook), so any optimizer updates only them, and
every other entry is written back to its value before the step after each optimizer step, so
decoupled weight decay (or momentum left from before a re-selection) never moves a frozen entry
(the official optimizers step only the masked entries: `adamw.py` keeps them as separate
tensors, `adamw2.py` restores the rest after each step).

Re-selection (`schedule`):
- `progressive` (default, official): once, after `progressive_iter` steps (null: half the run,
  as 2500 of the official 5005), the mask becomes M ∧ (|W| < threshold) on the current weights
  (entries that grew out of the small range stop training; frozen entries never change, so the
  official "|W| < threshold on all entries" is the same set) and the optimizer state of the
  target weights is cleared (moments and step count: `adamw.py` re-initialises its optimizer
  there). The official step at that iteration also returns without an update; here the next
  step updates with the fresh state.
- `periodic` (the earlier rule): every `reselect_every` steps, |W| < threshold, moments kept.

Penalty (`loss_term`, `penalty`), on ONE target layer per step:
- `masked_weight` (default, official `nuclear_norm(param * mask)`): `nuclear_weight`·‖W ⊙ M‖_*;
- `masked_update` (the earlier rule): `nuclear_weight`·‖(W − W₀) ⊙ M‖_*, W₀ the pre-trained weight.
The layer is drawn among the 2-D target weights whose smaller side exceeds
`penalty_min_side` (official: `min(param.shape) > 64`); none: no penalty. The draw is a function
of (`seed`, step) (Python's `random.Random` seeded with both), so a resumed run draws the same
layers as a straight one. The term's gradient passes the same mask. (As read, the official
`adamw.py` takes this term's backward on the module's original parameter tensors, which its
optimizer no longer steps; `adamw2.py` adds it to the stepped weights, as here.)

Not reproduced: the official default lr, 1e-3·exp(−350·threshold) ≈ 5.0e-4 when none is given
(lrlab uses the optimizer group's lr).

The run summary's `trainable_params` counts the masked entries (at the time of writing, since
re-selection changes them) plus the other trainable parameters (`trained_entries`). The masks are
buffers of the method, so a checkpoint restores them as re-selection left them; W₀ (for
`masked_update`) is the pre-trained weight, recomputed when the method is applied again on a resume.
"""

import random

import torch
from torch import nn

from lrlab.adapters.base import Adapter, targeted
from lrlab.errors import require

SCHEDULES = ("progressive", "periodic")
PENALTIES = ("masked_weight", "masked_update")


def penalised_layer(seed: int, step: int, candidates: int) -> int:
    """The index of the layer penalised at `step`: a pure function of (seed, step)."""
    return random.Random(f"{seed}:{step}").randrange(candidates)


class SaRA(Adapter):
    shardable = False  # FSDP2: masks shaped like whole weights
    def __init__(self, target_modules=None, threshold: float = 2e-3, nuclear_weight: float = 5e-4,
                 penalty: str = "masked_weight", penalty_min_side: int = 64, schedule: str = "progressive",
                 progressive_iter: int | None = None, reselect_every: int = 100, seed: int = 0, train_also=None):
        super().__init__(target_modules, train_also)
        require(threshold > 0, "adapter.threshold", threshold, "a positive float")
        require(penalty in PENALTIES, "adapter.penalty", penalty, " or ".join(PENALTIES))
        require(schedule in SCHEDULES, "adapter.schedule", schedule, " or ".join(SCHEDULES))
        require(progressive_iter is None or progressive_iter >= 1, "adapter.progressive_iter", progressive_iter,
                "null (half the run) or an integer >= 1")
        require(reselect_every >= 1, "adapter.reselect_every", reselect_every, "an integer >= 1")
        self.threshold, self.nuclear_weight, self.penalty = threshold, nuclear_weight, penalty
        self.penalty_min_side, self.schedule = penalty_min_side, schedule
        self.progressive_iter, self.reselect_every, self.seed = progressive_iter, reselect_every, seed
        self.names: list[str] = []
        self.penalised: list[int] = []  # indices (into `names`) of the layers the penalty may draw
        self.initial: list[torch.Tensor] = []
        self.before_step: dict[int, torch.Tensor] = {}

    def mask(self, i: int) -> torch.Tensor:
        return getattr(self, f"mask_{i}")

    def adapt(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        for i, (name, module) in enumerate(targeted(model, self.target_modules)):
            weight = module.weight
            weight.requires_grad_(True)
            self.names.append(f"{name}.weight")
            if weight.ndim == 2 and min(weight.shape) > self.penalty_min_side:
                self.penalised.append(i)
            if self.penalty == "masked_update":
                self.initial.append(weight.detach().clone())
            self.register_buffer(f"mask_{i}", weight.detach().abs() < self.threshold)
            weight.register_hook(lambda grad, i=i, w=weight: self._masked(i, w, grad))
        return model

    def _masked(self, i: int, weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The gradient hook: keep the weight's pre-step values (to restore its frozen entries
        after the step) and zero the gradient outside the mask."""
        self.before_step[i] = weight.detach().clone()
        return grad.masked_fill(~self.mask(i), 0)

    def weights(self, model: nn.Module) -> list[nn.Parameter]:
        params = dict(model.named_parameters())
        return [params[name] for name in self.names]

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor | None:
        if not self.penalised or self.nuclear_weight == 0:
            return None
        i = self.penalised[penalised_layer(self.seed, task.global_step, len(self.penalised))]
        weight = self.weights(task.model)[i]
        if self.penalty == "masked_update":
            self.initial[i] = self.initial[i].to(weight.device)
            weight = weight - self.initial[i]
        return self.nuclear_weight * torch.linalg.matrix_norm(weight * self.mask(i).to(weight.dtype), ord="nuc")

    def after_step(self, task, step: int) -> None:
        weights = self.weights(task.model)
        self.restore_frozen(weights)
        if self.schedule == "periodic":
            if step > 0 and step % self.reselect_every == 0:
                self.reselect(weights)
        elif step + 1 == self.reselect_step(task.total_steps):
            self.reselect(weights)
            self.reset_optimizer_state(task, weights)

    def restore_frozen(self, weights: list[nn.Parameter]) -> None:
        with torch.no_grad():
            for i, weight in enumerate(weights):
                before = self.before_step.pop(i, None)
                if before is not None:
                    weight.copy_(torch.where(self.mask(i), weight, before))

    def reselect_step(self, total_steps: int) -> int:
        """The number of steps after which the progressive schedule re-selects."""
        return self.progressive_iter if self.progressive_iter is not None else max(1, total_steps // 2)

    def reselect(self, weights: list[nn.Parameter]) -> None:
        for i, weight in enumerate(weights):
            small = weight.detach().abs() < self.threshold
            self.mask(i).copy_(small if self.schedule == "periodic" else self.mask(i) & small)

    @staticmethod
    def reset_optimizer_state(task, weights: list[nn.Parameter]) -> None:
        for optimizer in task.trainer.optimizers:
            for weight in weights:
                optimizer.state.pop(weight, None)

    def trained_entries(self, model: nn.Module) -> dict[str, int]:
        return {name: int(self.mask(i).sum()) for i, name in enumerate(self.names)}
