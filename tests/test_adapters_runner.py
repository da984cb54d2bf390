"""Adapters through the runner: a few steps on digits + MLP (64 -> 256 -> 256 -> 10) per adapter."""

import pytest

from lrlab.train import run

DIGITS = "experiment=baseline/digits_mlp_adamw"
HEAD = 256 * 10 + 10
LORA_8 = 8 * (64 + 256) + 8 * (256 + 256)


@pytest.mark.parametrize("overrides, expected", [
    (["adapter=lora"], LORA_8 + HEAD),
    (["adapter=allora"], LORA_8 + HEAD),
    (["adapter=ba_lora"], LORA_8 + HEAD),
    # hooks see the 0-based step just taken: ranks grow after steps 2 and 4 of 0..5
    (["adapter=increlora", "adapter.interval=2"], 3 * (64 + 256 + 1) + 3 * (256 + 256 + 1) + HEAD),
    (["adapter=adalora"], 12 * (64 + 256 + 1) + 12 * (256 + 256 + 1) + HEAD),
    (["adapter=lift", "optimizer=lift"], 64 * 256 + 256 * 256 + HEAD),
])
def test_adapter_trains_through_the_runner(make_cfg, overrides, expected):
    summary = run(make_cfg(DIGITS, "debug=smoke", *overrides))
    assert summary["status"] == "completed"
    assert summary["trainable_params"] == expected
    assert summary["steps"] == 6
