"""`lrlab estimate`: optimizer-state bytes equal a real run's, the other figures follow from the
model's shapes, the CLI prints the JSON keys, and the total is close to a measured CPU peak."""

import json

import pytest

from lrlab.estimate import activation_bytes, estimate

TINY = ["model=llama_tiny", "data.max_tokens=40000", "data.seq_len=32", "data.batch_size=4", "trainer.max_steps=1",
        "trainer.val_check_interval=1", "trainer.limit_val_batches=1"]
METHODS = {
    "adamw": ["optimizer=adamw"],
    "galore": ["optimizer=galore", "optimizer.rank=8"],
    "fira": ["optimizer=fira", "optimizer.rank=8"],
    "dct": ["optimizer=dct", "optimizer.rank=8"],
    "frugal": ["optimizer=frugal"],
    "lora": ["optimizer=adamw", "adapter=lora"],
    "lowrank_parametrization": ["optimizer=adamw", "parametrization=lowrank"],
    "adamw_bf16_true": ["optimizer=adamw", "trainer.precision=bf16-true"],
    "galore_bf16_true": ["optimizer=galore", "optimizer.rank=8", "trainer.precision=bf16-true"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_optimizer_state_equals_a_real_one_step_run(make_cfg, method):
    from lrlab.train import run

    cfg = make_cfg(*TINY, *METHODS[method])
    predicted = estimate(cfg)
    measured = run(cfg)
    assert measured["steps"] == 1
    assert predicted.optimizer_state_bytes == measured["optimizer_state_bytes"] > 0


def test_weights_grads_and_layerwise_from_the_shapes(make_cfg):
    import torch

    from lrlab.instantiate import instantiate_node

    cfg = make_cfg(*TINY, "optimizer=galore", "optimizer.rank=8")
    model = instantiate_node(cfg.model, "model")
    sizes = [p.numel() * 4 for p in model.parameters()]
    normal = estimate(cfg)
    assert normal.weights_bytes == sum(sizes) + sum(b.numel() * b.element_size() for b in model.buffers())
    assert normal.grads_bytes == sum(sizes)
    per_weight = estimate(make_cfg(*TINY, "optimizer=galore", "optimizer.rank=8", "optimizer.layerwise=true"))
    assert per_weight.grads_bytes == max(sizes)
    assert per_weight.optimizer_state_bytes == normal.optimizer_state_bytes
    bf16 = estimate(make_cfg(*TINY, "optimizer=galore", "optimizer.rank=8", "trainer.precision=bf16-true"))
    assert bf16.weights_bytes * 2 == normal.weights_bytes and bf16.grads_bytes * 2 == normal.grads_bytes
    assert torch.get_default_dtype() == torch.float32


def test_activations_scale_with_the_tokens_and_checkpointing_keeps_layer_inputs():
    from transformers import LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                         vocab_size=100)
    one = activation_bytes(config, 1, 32, 4, checkpointing=False)
    assert activation_bytes(config, 2, 32, 4, False) == 2 * one == activation_bytes(config, 1, 64, 4, False)
    per_layer = (10 * 64 + 4 * 160 + 4 + 2) * 4
    assert one == 32 * (3 * per_layer + 3 * 64 * 4 + 3 * 100 * 4)
    kept = activation_bytes(config, 1, 32, 4, checkpointing=True)
    assert kept == 32 * (3 * 64 * 4 + per_layer + 3 * 64 * 4 + 3 * 100 * 4)


def test_cli_prints_the_json_keys(cli):
    code, out, err = cli("estimate", "--json", "model=llama_60m", "optimizer=galore")
    assert code == 0, err
    figures = json.loads(out)
    keys = ("weights_bytes", "grads_bytes", "optimizer_state_bytes", "activations_bytes", "total_bytes")
    assert all(isinstance(figures[k], int) and figures[k] > 0 for k in keys)
    assert figures["total_bytes"] == sum(figures[k] for k in (*keys[:4], "runtime_bytes"))


def test_cli_bad_input_is_one_line(cli, tmp_path):
    code, _, err = cli("estimate", "model=no_such_model")
    assert code == 2 and err.strip().startswith("error: model=no_such_model") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_total_is_within_15_percent_of_the_measured_cpu_peak():
    """llama_20m, vocab 32000, batch 16 x 128, AdamW, 2 steps; llama_60m: scripts/check_estimate.py."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "check_estimate.py"
    spec = importlib.util.spec_from_file_location("check_estimate", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    predicted, measured = check.compare("llama_20m")
    assert abs(predicted - measured) <= 0.15 * measured, (predicted, measured)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["adamw", "galore", "dct"])
def test_fsdp2_optimizer_state_equals_rank_zeros_in_a_two_process_run(make_cfg, tmp_path, method):
    """Under `trainer=fsdp2` on 2 processes the estimate counts what rank 0 holds (its rows of
    Adam's moments, of P and of the right side's low-rank moments; Q, DCT indices and the left
    side's moments whole), as the run's summary reports it."""
    import os
    import subprocess
    import sys

    overrides = [*TINY, *METHODS[method], "trainer=fsdp2", "trainer.accelerator=cpu", "logger=none"]
    done = subprocess.run([sys.executable, "-m", "lrlab.cli", "train", *overrides, "run_name=sharded"], cwd=tmp_path,
                          env={**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    measured = json.loads((tmp_path / "outputs" / "runs" / "sharded" / "summary.json").read_text())
    predicted = estimate(make_cfg(*overrides))
    assert predicted.processes == 2
    assert predicted.optimizer_state_bytes == measured["optimizer_state_bytes"] > 0
    whole = estimate(make_cfg(*TINY, *METHODS[method])).optimizer_state_bytes
    assert predicted.optimizer_state_bytes < whole  # the sharded part is halved
