"""The low-rank optimizers through the runner: presets train, resume is exact, state is smaller."""

import pytest
import torch

from lrlab.train import run

TINY = ["data.max_tokens=60000", "data.seq_len=64"]


@pytest.mark.parametrize("preset", ["galore", "fira", "dct", "frugal", "frugal_svd", "lowrank_reset"])
def test_miniature_presets_run(make_cfg, preset):
    summary = run(make_cfg(f"experiment={preset}/llama_tiny_cpu", *TINY, "debug=smoke", "optimizer.update_proj_gap=2"))
    assert summary["status"] == "completed" and summary["steps"] == 6


def test_lowrank_reset_preset_restarts_every_group(make_cfg, tmp_path):
    """T=4, 6 steps: the reset at step 4 restarts the moments of every parameter, dense ones
    included, so each has taken 2 Adam steps since."""
    run(make_cfg("experiment=lowrank_reset/llama_tiny_cpu", *TINY, "debug=smoke", "optimizer.update_proj_gap=4"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    states = ckpt["optimizer_states"][0]["state"].values()
    assert len(states) > 10 and {s["adam_step"] for s in states} == {2}
    assert {s["rewarm_from"] for s in states} == {4}


def test_projected_state_is_smaller_than_adamw(make_cfg):
    adamw = run(make_cfg("experiment=baseline/llama_tiny_adamw", *TINY, "debug=smoke", run="adamw"))
    galore = run(make_cfg("experiment=galore/llama_tiny_cpu", *TINY, "debug=smoke", run="galore"))
    # group 0 holds the projected attention/MLP weights: rank 32 of 128 keeps well under half
    assert galore["optimizer_state_bytes_by_group"][0] < 0.5 * adamw["optimizer_state_bytes_by_group"][0]


@pytest.mark.parametrize("preset", ["fira", "dct", "frugal"])
def test_resume_across_a_refresh_matches_straight(make_cfg, tmp_path, preset):
    """T=3 < N=4: the projector (the block selection) refreshes on both sides of the checkpoint."""
    n = 4
    common = [f"experiment={preset}/llama_tiny_cpu", *TINY, "optimizer.update_proj_gap=3", f"trainer.max_steps={2 * n}",
              "trainer.val_check_interval=4", f"callbacks.checkpoint.every_n_train_steps={n}",
              "callbacks.checkpoint.save_top_k=-1"]
    run(make_cfg(*common, run="straight"))
    mid = tmp_path / "straight" / "checkpoints" / f"step{n:06d}.ckpt"
    run(make_cfg(*common, f"ckpt_path={mid}", run="resumed"))
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_bad_rank_is_one_line(cli):
    code, _, err = cli("train", "experiment=galore/llama_tiny_cpu", "optimizer.rank=1000", "logger=none")
    assert code == 2 and "optimizer.rank" in err and len(err.strip().splitlines()) == 1
