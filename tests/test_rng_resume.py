"""A resumed run draws the random numbers the straight run drew after its checkpoint: dropout,
nested-dropout truncations (the generator state travels in the checkpoint, and data loaders
draw from generators of their own)."""

import pytest
import torch

from lrlab.train import run


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("extra", [["model.dropout=0.5"], ["regularizer=nested_dropout"]], ids=["dropout", "nested"])
def test_random_draws_resume_exactly(make_cfg, tmp_path, extra):
    n = 5  # validations at 3 and 6 and a loader restart on resume must not shift the draws
    common = ["experiment=baseline/digits_mlp_adamw", *extra, f"trainer.max_steps={2 * n}",
              "trainer.val_check_interval=3", f"callbacks.checkpoint.every_n_train_steps={n}",
              "callbacks.checkpoint.save_top_k=-1"]
    run(make_cfg(*common, run="straight"))
    run(make_cfg(*common, f"ckpt_path={tmp_path / 'straight' / 'checkpoints' / f'step{n:06d}.ckpt'}", run="resumed"))
    straight, resumed = (_weights(tmp_path / r / "checkpoints" / "last.ckpt") for r in ("straight", "resumed"))
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_the_checkpoint_holds_the_generator_state(make_cfg, tmp_path):
    run(make_cfg("experiment=baseline/digits_mlp_adamw", "debug=smoke"))
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]["RNGState"]
    assert state["torch"].dtype == torch.uint8 and len(state["python"][1]) == 625
