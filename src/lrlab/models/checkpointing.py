"""Activation checkpointing (`model.activation_checkpointing`): a transformer keeps only each
layer's input during the forward pass and recomputes the layer's activations in the backward pass
(Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"), trading about one extra
forward pass for activation memory that no longer grows with the number of layers.

Hugging Face models do this per decoder/encoder layer (`activation_checkpointing_enable`); the
non-reentrant `torch.utils.checkpoint` keeps the gradients exact (it restores the RNG state for
dropout) and needs no input that requires grad, so frozen embeddings under an adapter work too.
"""

from torch import nn

from lrlab.errors import require


def apply(model: nn.Module, enabled: bool, key: str = "model.activation_checkpointing") -> nn.Module:
    require(isinstance(enabled, bool), key, enabled, "true or false")
    if enabled:
        require(getattr(model, "supports_gradient_checkpointing", False), key, enabled,
                f"{type(model).__name__} has no per-layer checkpointing; use false")
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model
