"""Adapters through the runner: a few steps on digits + MLP (64 -> 256 -> 256 -> 10) per adapter."""

import re

import pytest
import torch

from lrlab.train import run

DIGITS = "experiment=baseline/digits_mlp_adamw"
HEAD = 256 * 10 + 10
LORA_8 = 8 * (64 + 256) + 8 * (256 + 256)


@pytest.mark.parametrize("overrides, expected", [
    (["adapter=lora"], LORA_8 + HEAD),
    (["adapter=allora"], LORA_8 + HEAD),
    (["adapter=ba_lora"], LORA_8 + HEAD),
    # hooks see the 0-based step just taken: ranks grow after steps 2 and 4 of 0..5. Official rules: 4 ranks per
    # module per round within the total budget 2 x 8: 1 -> 5 -> 9 for body.1 (the more important at step 4), the
    # 2 ranks left for body.3 (1 -> 5 -> 7); the budget met, no reserve. The earlier rules: one rank per round
    (["adapter=increlora", "adapter.interval=2", "adapter.warmup=0"], 9 * (64 + 256 + 1) + 7 * (256 + 256 + 1) + HEAD),
    (["adapter=increlora", "adapter.interval=2", "adapter.warmup=0", "adapter.advance_learning=false",
      "adapter.scale=target_rank", "adapter.ranks_per_growth=1", "adapter.top_h=2"],
     3 * (64 + 256 + 1) + 3 * (256 + 256 + 1) + HEAD),
    # before the first growth, the 4 reserve ranks' P and Q rows train too
    (["adapter=increlora"], (64 + 256 + 1) + 4 * (64 + 256) + (256 + 256 + 1) + 4 * (256 + 256) + HEAD),
    (["adapter=adalora"], 12 * (64 + 256 + 1) + 12 * (256 + 256 + 1) + HEAD),
    (["adapter=lift"], LORA_8 + HEAD),  # K = (m + n) * 8 entries per weight
])
def test_adapter_trains_through_the_runner(make_cfg, overrides, expected):
    summary = run(make_cfg(DIGITS, "debug=smoke", *overrides))
    assert summary["status"] == "completed"
    assert summary["trainable_params"] == expected
    assert summary["steps"] == 6


def test_eva_ranks_redistributed_at_fit_start_are_all_in_the_optimizer(make_cfg, tmp_path):
    # a 6-wide first layer makes the second layer's inputs far more concentrated than the pixels,
    # so EVA moves rank there: body.1 (64 -> 6) gets 1, body.3 (6 -> 64) gets 3 of the budget 2 x 2
    summary = run(make_cfg(DIGITS, "debug=smoke", "model.hidden=[6,64]", "adapter=eva", "adapter.r=2",
                           "adapter.tau=0.5"))
    assert summary["status"] == "completed"
    assert summary["trainable_params"] == 1 * (64 + 6) + 3 * (6 + 64) + (64 * 10 + 10)
    tensors = 2 * 2 + 2  # lora_A, lora_B per layer; head weight and bias
    # AdamW state: exp_avg and exp_avg_sq (fp32) per trainable entry plus a 4-byte step per tensor
    assert summary["optimizer_state_bytes"] == 8 * summary["trainable_params"] + 4 * tensors
    weights = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    ranks = {re.search(r"(body\.\d+)\.lora_A\.", key)[1]: value.shape[0]  # the rows of each layer's A
             for key, value in weights.items() if ".lora_A." in key}
    assert ranks == {"body.1": 1, "body.3": 3}


@pytest.mark.parametrize("preset, expected", [
    ("lora/digits_pretrained_mlp_lora", LORA_8 + 256 * 5 + 5),  # the new head has the 5 fine-tuning classes
    # conv LoRA r=4: A is a 3x3 conv to 4 channels, B a 1x1 conv back; + head Linear(64, 5)
    ("lora/digits_pretrained_cnn_lora", (4 * 1 * 9 + 32 * 4) + (4 * 32 * 9 + 64 * 4) + 64 * 5 + 5),
])
@pytest.mark.slow
def test_pretrained_miniature_fine_tunes_on_new_classes(make_cfg, preset, expected):
    summary = run(make_cfg(f"experiment={preset}", "debug=smoke"))
    assert summary["status"] == "completed"
    assert summary["trainable_params"] == expected
