"""LLaMA causal LMs built from a config (no weights downloaded), as in the GaLore paper.

Sizes follow the GaLore repository's `configs/llama_*.json`; `llama_tiny` is a CPU-sized
member of the same family.
"""

from transformers import LlamaConfig, LlamaForCausalLM

from lrlab.errors import require
from lrlab.models import checkpointing


def check_sizes(**sizes) -> None:
    for key, value in sizes.items():
        require(isinstance(value, int) and not isinstance(value, bool) and value > 0, f"model.{key}", value,
                "must be a positive integer")


def build(vocab_size: int, hidden_size: int, intermediate_size: int, num_hidden_layers: int,
          num_attention_heads: int, max_position_embeddings: int = 1024, rms_norm_eps: float = 1e-6,
          num_key_value_heads: int | None = None, tie_word_embeddings: bool = False,
          attn_implementation: str = "sdpa", activation_checkpointing: bool = False) -> LlamaForCausalLM:
    check_sizes(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                max_position_embeddings=max_position_embeddings)
    require(hidden_size % num_attention_heads == 0, "model.hidden_size", hidden_size,
            f"must be divisible by num_attention_heads={num_attention_heads}")
    require((hidden_size // num_attention_heads) % 2 == 0, "model.num_attention_heads", num_attention_heads,
            f"must leave an even head size (hidden_size / heads = {hidden_size / num_attention_heads:g}; RoPE "
            "rotates pairs of channels)")
    kv_heads = num_key_value_heads or num_attention_heads
    require(isinstance(kv_heads, int) and kv_heads > 0 and num_attention_heads % kv_heads == 0,
            "model.num_key_value_heads", num_key_value_heads,
            f"must be a positive divisor of num_attention_heads={num_attention_heads}")
    require(rms_norm_eps > 0, "model.rms_norm_eps", rms_norm_eps, "must be > 0")
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=rms_norm_eps,
        tie_word_embeddings=tie_word_embeddings, use_cache=False, pad_token_id=None,
        bos_token_id=None, eos_token_id=None,
    )
    config._attn_implementation = attn_implementation
    return checkpointing.apply(LlamaForCausalLM(config), activation_checkpointing)
