"""SaRA: fine-tune the small ("ineffective") pre-trained weights (Hu et al., 2024, "SaRA:
High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation").

Mask: entries of each target weight with |w| < `threshold` (2e-3). Only they move: the weight's
gradient is multiplied by the mask (a tensor hook), so any optimizer updates only them.
Penalty (`loss_term`): `nuclear_weight` * ||(W - W_0) * mask||_* for ONE target layer drawn at
random each call (a low-rank constraint on the sparse update, at one SVD per step).
Re-selection: every `reselect_every` steps the mask becomes |W| < threshold on the current
weights, so entries that grew out of the small range stop training and newly small ones start.
The run summary's `trainable_params` counts the masked entries (at the time of writing, since
re-selection changes them) plus the other trainable parameters (`trained_entries`). The masks are
buffers of the method, so a checkpoint restores them as re-selection left them; W_0 is the
pre-trained weight, recomputed when the method is applied again on a resume.
"""

import torch
from torch import nn

from lrlab.adapters.base import Adapter, targeted
from lrlab.errors import require


class SaRA(Adapter):
    def __init__(self, target_modules=None, threshold: float = 2e-3, nuclear_weight: float = 5e-4,
                 reselect_every: int = 100, seed: int = 0, train_also=None):
        super().__init__(target_modules, train_also)
        require(threshold > 0, "adapter.threshold", threshold, "a positive float")
        require(reselect_every >= 1, "adapter.reselect_every", reselect_every, "an integer >= 1")
        self.threshold, self.nuclear_weight, self.reselect_every = threshold, nuclear_weight, reselect_every
        self.generator = torch.Generator().manual_seed(seed)
        self.names: list[str] = []
        self.initial: list[torch.Tensor] = []

    def mask(self, i: int) -> torch.Tensor:
        return getattr(self, f"mask_{i}")

    def adapt(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        for i, (name, module) in enumerate(targeted(model, self.target_modules)):
            weight = module.weight
            weight.requires_grad_(True)
            self.names.append(f"{name}.weight")
            self.initial.append(weight.detach().clone())
            self.register_buffer(f"mask_{i}", weight.detach().abs() < self.threshold)
            weight.register_hook(lambda grad, i=i: grad.masked_fill(~self.mask(i), 0))
        return model

    def weights(self, model: nn.Module) -> list[nn.Parameter]:
        params = dict(model.named_parameters())
        return [params[name] for name in self.names]

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor:
        i = int(torch.randint(len(self.names), (1,), generator=self.generator))
        weight = self.weights(task.model)[i]
        self.initial[i] = self.initial[i].to(weight.device)
        sparse_update = (weight - self.initial[i]) * self.mask(i).to(weight.dtype)
        return self.nuclear_weight * torch.linalg.matrix_norm(sparse_update, ord="nuc")

    def after_step(self, task, step: int) -> None:
        if step > 0 and step % self.reselect_every == 0:
            for i, weight in enumerate(self.weights(task.model)):
                self.mask(i).copy_(weight.detach().abs() < self.threshold)

    def trained_entries(self, model: nn.Module) -> dict[str, int]:
        return {name: int(self.mask(i).sum()) for i, name in enumerate(self.names)}
