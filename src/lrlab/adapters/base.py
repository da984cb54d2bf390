"""The adapter protocol.

An adapter config names a function with `_target_`; the runner calls it before the
optimizer is built:

    model = apply(model, **cfg)

It returns the (possibly wrapped) model with `requires_grad` set on exactly what trains.
An adapter may also return an object with extra hooks by attaching them to the model:
`model.lrlab_hooks` (a list of callables `hook(task, step)` run after every optimizer step,
e.g. AdaLoRA's rank allocation) and `model.lrlab_penalty` (a callable `(task) -> Tensor`
added to the loss, e.g. AdaLoRA's orthogonality penalty).
"""

from torch import nn


def none(model: nn.Module) -> nn.Module:
    """Full fine-tuning / training: every parameter trains."""
    return model
