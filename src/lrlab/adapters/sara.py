"""SaRA: fine-tune the small ("ineffective") pre-trained weights (Hu et al., 2024, "SaRA:
High-Efficient Diffusion Model Fine-tuning with Progressive Sparse Low-Rank Adaptation").

Mask: entries of each target weight with |w| < `threshold` (2e-3). Only they move: the weight's
gradient is multiplied by the mask (a tensor hook), so any optimizer updates only them.
Penalty: `model.lrlab_penalty` adds `nuclear_weight` * ||(W - W_0) * mask||_* for ONE target layer
drawn at random each call (a low-rank constraint on the sparse update, at one SVD per step).
Re-selection: every `reselect_every` steps the mask becomes |W| < threshold on the current
weights, so entries that grew out of the small range stop training and newly small ones start.
The run summary's `trainable_params` counts the masked entries (at the time of writing, since
re-selection changes them) plus the other trainable parameters (`model.lrlab_trainable_params`).
"""

import torch
from torch import nn

from lrlab.adapters.base import is_target, train_fully, trainable_count
from lrlab.errors import require


class _Mask:
    def __init__(self, weight: nn.Parameter, threshold: float):
        self.weight, self.threshold = weight, threshold
        self.initial = weight.detach().clone()
        self.reselect()
        weight.register_hook(lambda grad: grad * self.mask)

    def reselect(self) -> None:
        self.mask = (self.weight.detach().abs() < self.threshold).to(self.weight.dtype)

    def nuclear(self) -> torch.Tensor:
        return torch.linalg.matrix_norm((self.weight - self.initial) * self.mask, ord="nuc")


def apply(model: nn.Module, target_modules: list[str], threshold: float = 2e-3, nuclear_weight: float = 5e-4,
          reselect_every: int = 100, seed: int = 0, train_also: tuple[str, ...] = ()) -> nn.Module:
    require(threshold > 0, "adapter.threshold", threshold, "a positive float")
    require(reselect_every >= 1, "adapter.reselect_every", reselect_every, "an integer >= 1")
    model.requires_grad_(False)
    masks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and is_target(name, target_modules):
            module.weight.requires_grad_(True)
            masks.append(_Mask(module.weight, threshold))
    require(bool(masks), "adapter.target_modules", target_modules, "names of nn.Linear modules in the model")
    generator = torch.Generator().manual_seed(seed)

    def penalty(task, outputs, batch) -> torch.Tensor:
        chosen = masks[int(torch.randint(len(masks), (1,), generator=generator))]
        return nuclear_weight * chosen.nuclear()

    def reselect(task, step) -> None:
        if step > 0 and step % reselect_every == 0:
            for mask in masks:
                mask.reselect()

    model.lrlab_penalty = penalty
    model.lrlab_hooks = [reselect]
    model.lrlab_trainable_params = lambda: trainable_count(model, {m.weight: int(m.mask.sum()) for m in masks})
    return train_fully(model, list(train_also))
