"""The adapter protocol.

An adapter config names a function with `_target_`; the runner calls it before the
optimizer is built:

    model = apply(model, **cfg)

It returns the (possibly wrapped) model with `requires_grad` set on exactly what trains.
An adapter may attach optional hooks to the model; the task calls them, so `train.py` stays
method-agnostic:

- `model.lrlab_init_hooks`: callables `hook(task, train_loader)` run once at the start of
  `fit` (in the task's `setup`), after the data is set up and BEFORE the optimizer is built,
  with the model on the training device. For data-driven initialisations that may change the
  parameter set (EVA redistributes ranks). On a resume they run again on the same batches
  (same shapes), then the checkpoint's weights are loaded over them.
- `model.lrlab_hooks`: callables `hook(task, step)` run after every optimizer step, `step` the
  0-based index of the step just taken (AdaLoRA's and IncreLoRA's rank allocation, SaRA's
  re-selection).
- `model.lrlab_penalty`: a callable `penalty(task, outputs, batch) -> Tensor` added to the
  training loss; `outputs` is the task's forward output for `batch` (`logits`, `loss`), so a
  penalty can use the current batch's predictions (BA-LoRA) or ignore them (AdaLoRA).
- `model.lrlab_trainable_params`: a callable `() -> int`; when present the run summary's
  `trainable_params` is its value instead of the count of `requires_grad` parameters: the
  entries that can change, for adapters that train only part of a tensor (IncreLoRA's active
  ranks, LIFT's budget, SaRA's mask). `trainable_count` builds it.
"""

from torch import nn

from lrlab.errors import require


def train_fully(model: nn.Module, names: list[str]) -> nn.Module:
    """Let the modules named in `names` (e.g. a fresh classifier `head`) train fully."""
    for name, param in model.named_parameters():
        if any(f".{part}." in f".{name}" for part in names):
            param.requires_grad_(True)
    return model


def is_target(name: str, target_modules: list[str]) -> bool:
    """A module named `name` is adapted when its name is, or ends in, one of `target_modules`."""
    return any(name == t or name.endswith("." + t) for t in target_modules)


def replace_linears(model: nn.Module, target_modules: list[str], make) -> int:
    """Swap every `nn.Linear` named (or ending in) one of `target_modules` for `make(linear)`."""
    replaced = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and is_target(name, target_modules):
            model.set_submodule(name, make(module))
            replaced += 1
    require(replaced > 0, "adapter.target_modules", target_modules, "names of nn.Linear modules in the model")
    return replaced


def merge_modules(model: nn.Module, kind: type) -> nn.Module:
    """Replace every `kind` module by its `merged()` plain linear."""
    for name, module in list(model.named_modules()):
        if isinstance(module, kind):
            model.set_submodule(name, module.merged())
    return model


def trainable_count(model: nn.Module, partial: dict) -> int:
    """Every `requires_grad` parameter in full, except those in `partial` (parameter -> the number
    of its entries that train)."""
    return int(sum(partial[p] if p in partial else p.numel() for p in model.parameters() if p.requires_grad))


def none(model: nn.Module) -> nn.Module:
    """Full fine-tuning / training: every parameter trains."""
    return model
