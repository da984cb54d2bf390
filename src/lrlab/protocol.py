"""The method protocol: the one way adapters, parametrizations, regularizers and losses plug in.

A method is a `Method`: an `nn.Module` (the task holds its methods as modules, so their buffers
are checkpointed and move with the model) built by Hydra from its config node, with optional
hooks. The core (`train`, the tasks, the callbacks) calls the hooks and names no method; a
method overrides only what it needs. In the order a run calls them:

Build (before the Trainer exists; `lrlab validate` runs this part too):
- `tasks`: the task kinds the method supports (`classify`, `causal_lm`). Any other is refused
  with one line before anything is written.
- `shardable`: whether the method works when FSDP2 (`trainer=fsdp2`) replaces the model's
  parameters by row-sharded DTensors after the method is built. False for a method that keeps
  references to the parameters or tensors shaped like whole weights (masks, frozen copies) or
  takes a whole weight's SVD in its hooks: `trainer=fsdp2` refuses it with one line at start.
- `transform_model(model) -> model`: wrap or rewrite the model (an adapter's layers, a
  reparametrisation such as weight norm). Applied in config order: parametrization, adapter,
  regularizers; `requires_grad` says what trains afterwards.
- `build_optimizer(model, optimizer: dict) -> Optimizer | None`: a method that needs its own
  optimizer (LIFT's masked AdamW) builds it from the `optimizer` group's hyperparameters, and
  refuses an optimizer choice it cannot honour. At most one method may own the optimizer.

Fit start:
- `bind_data(num_samples, num_classes)`: allocate per-sample state (buffers) once the training
  set is known.
- `init_from_data(task, loader)`: data-driven initialisation on the training device, before the
  optimizer is built (EVA); it may change the parameter set.

Every training step:
- `transform_features(features) -> features`: a classifier's penultimate features, in training
  mode only, before its head (nested dropout).
- `sample_weights(task, outputs, batch) -> Tensor | None`: one weight per sample for the loss
  (a weighted mean; weight 0 drops the sample). Weights of several methods multiply.
- `loss_term(task, outputs, batch) -> Tensor | None`: a term added to the loss, already
  weighted (ELR, the nuclear norm, an adapter's penalty); logged as `train/term_<name>`.
- `after_step(task, step)`: after each optimizer step, gradients still present, `step` the
  0-based index of the step just taken (rank allocation, mask re-selection).
- `lr_scale(step) -> float`: multiplies the scheduled lr of step `step` (a re-warm after a reset).

Once per epoch: `on_train_epoch_end(task)`.

Accounting and export:
- `trained_entries(model) -> dict[str, int]`: parameters (by name in `model`) of which only
  some entries train (a mask, a budget, active ranks), with the count that does; the summary's
  `trainable_params` counts those and every other trainable parameter in full.
- `export(model) -> model`: undo `transform_model` for export (merge an adapter, densify a
  factorisation); the function stays the same.
- `export_adapter(model) -> model | None`: the model in an adapter format of its own that loads
  back onto the untouched base model (a `peft.PeftModel` whose `modules_to_save` hold the modules
  that trained fully), which `lrlab export` saves with its `save_pretrained`; None (the default):
  `export` merges it.

The loss is a `Loss` (a method with `forward`): exactly one per run, its own config group.

What these hooks already cover, without a change to the core:
- Pruning with rewinding (lottery tickets): `after_step` re-applies a mask buffer to the
  weights, and at the rewind step copies stored early weights back and clears the optimizer's
  state (`task.trainer.optimizers`); `trained_entries` counts the unpruned weights.
- Online data selection: `sample_weights` from the per-sample loss of the batch (0 drops).
- Periodic re-factorisation of W = B·A: `after_step` re-balances the factors and resets the
  optimizer's moments; `lr_scale` re-warms the lr after it.
- A method that rewrites the model and is undone for export: `transform_model` and `export`.

A method must not keep the model or its modules as attributes (they would be registered as its
submodules and saved twice): it receives the task or model in each hook, and keeps per-weight
state as buffers keyed by parameter name.
"""

import torch
from torch import nn

TASKS = ("classify", "causal_lm")


class Method(nn.Module):
    tasks: tuple[str, ...] = TASKS
    shardable: bool = True

    def __init__(self):
        super().__init__()
        self.name = type(self).__name__.lower()
        self.config_key = self.name  # the config key it was built from (set by the core), for messages

    def transform_model(self, model: nn.Module) -> nn.Module:
        return model

    def build_optimizer(self, model: nn.Module, optimizer: dict) -> torch.optim.Optimizer | None:
        return None

    def bind_data(self, num_samples: int, num_classes: int) -> None:
        """Allocate per-sample state once the training-set size is known."""

    def init_from_data(self, task, loader) -> None:
        """Initialise from training batches before the optimizer is built."""

    def transform_features(self, features: torch.Tensor) -> torch.Tensor:
        return features

    def sample_weights(self, task, outputs: dict, batch: dict) -> torch.Tensor | None:
        return None

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor | None:
        return None

    def after_step(self, task, step: int) -> None:
        """After each optimizer step (gradients still present)."""

    def lr_scale(self, step: int) -> float:
        return 1.0

    def on_train_epoch_end(self, task) -> None:
        """Once per epoch, after its last training step."""

    def trained_entries(self, model: nn.Module) -> dict[str, int]:
        return {}

    def export(self, model: nn.Module) -> nn.Module:
        return model

    def export_adapter(self, model: nn.Module) -> nn.Module | None:
        return None

    def overrides(self, hook: str) -> bool:
        """True when this method implements `hook` (so the core can skip work nobody asked for)."""
        return getattr(type(self), hook) is not getattr(Method, hook)


class Loss(Method):
    """The training loss: `forward(outputs, batch, task, weights)` returns a scalar; `weights`
    (one per sample, or None) makes it a weighted mean over samples."""

    def forward(self, outputs: dict, batch: dict, task, weights: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over the first axis; with `weights`, Σ wᵢ·lᵢ / Σ wᵢ."""
    if weights is None:
        return per_sample.mean()
    weights = weights.to(per_sample.dtype)
    return (per_sample * weights).sum() / weights.sum().clamp_min(torch.finfo(per_sample.dtype).tiny)
