"""`model.activation_checkpointing`: the same gradients as without it, and a lower peak of live
activation memory (both runs measured here with `lrlab.probes.LiveBytes`)."""

import pytest
import torch

from lrlab.errors import ConfigError
from lrlab.instantiate import instantiate_node
from lrlab.models import llama
from lrlab.probes import LiveBytes
from lrlab.train import compose

SIZES = dict(vocab_size=64, hidden_size=64, intermediate_size=172, num_hidden_layers=4, num_attention_heads=4)


def llama_step(checkpointing: bool) -> tuple[list[torch.Tensor], int]:
    """(parameter gradients, peak live bytes) of one forward and backward pass."""
    torch.manual_seed(0)
    model = llama.build(**SIZES, activation_checkpointing=checkpointing)
    tokens = torch.randint(0, SIZES["vocab_size"], (4, 128), generator=torch.Generator().manual_seed(1))
    with LiveBytes() as live:
        model(input_ids=tokens, labels=tokens).loss.backward()
    return [p.grad for p in model.parameters()], live.peak


def test_llama_gradients_are_unchanged_and_the_peak_drops():
    plain, plain_peak = llama_step(False)
    checkpointed, checkpointed_peak = llama_step(True)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)  # the recomputation runs the same kernels
    assert checkpointed_peak < 0.6 * plain_peak, (checkpointed_peak, plain_peak)


def test_dropout_is_replayed_in_the_recomputation():
    """MiniLM (BERT) trains with dropout: the recomputed forward draws the same masks."""
    from lrlab.models.minilm import build

    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(2)  # the head's initialisation, then the dropout masks
        model = build(num_classes=3, activation_checkpointing=checkpointing)
        batch = {"input_ids": torch.randint(1000, 2000, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
        model(batch)["logits"].square().sum().backward()
        grads.append([p.grad for p in model.body.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_the_config_key_reaches_the_model():
    cfg = compose(["model.activation_checkpointing=true"])
    model = instantiate_node(cfg.model, "model")
    assert model.model.gradient_checkpointing and model.is_gradient_checkpointing


@pytest.mark.parametrize("value", ["yes", "1"])
def test_a_non_boolean_is_refused(value):
    with pytest.raises(ConfigError, match="model.activation_checkpointing"):
        instantiate_node(compose([f"model.activation_checkpointing={value}"]).model, "model")
