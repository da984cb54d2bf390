"""Parametrizations through the runner: N steps + resume + N steps equals 2N straight (every periodic
event — refactorization and reset, re-sampling and re-SVD, truncation, shrinking — live across the
boundary), a sparse support never moves, and checkpoints load with weights_only=True."""

import pytest
import torch

from lrlab.train import run

STEPS = ["trainer.max_steps=8", "trainer.val_check_interval=4", "callbacks.checkpoint.every_n_train_steps=4",
         "callbacks.checkpoint.save_top_k=-1", "model.hidden=[32,32]"]
EVENTS_EVERY_3 = {
    "lowrank": ["parametrization.rank=4", "parametrization.refactorize_every=3", "parametrization.rewarm_steps=2"],
    "sltrain": ["parametrization.rank=4", "parametrization.density=0.1", "parametrization.refactorize_every=3",
                "parametrization.rewarm_steps=2"],
    "lost": ["parametrization.rank=4", "parametrization.channel_fraction=0.1"],
    "sst": ["parametrization.rank=4", "parametrization.resample_every=3", "parametrization.resvd_every=3"],
    "trp": ["parametrization.period=3"],
    "maestro": ["parametrization.prune_every=3", "parametrization.threshold=0.5"],
    "pela": ["parametrization.perturbation_weight=1.0"],
}


def straight_and_resumed(make_cfg, tmp_path, name: str) -> tuple[dict, dict]:
    common = ["experiment=baseline/digits_mlp_adamw", f"parametrization={name}", *STEPS, *EVENTS_EVERY_3[name]]
    assert run(make_cfg(*common, run="straight"))["status"] == "completed"
    middle = tmp_path / "straight" / "checkpoints" / "step000004.ckpt"
    assert run(make_cfg(*common, f"ckpt_path={middle}", run="resumed"))["status"] == "completed"
    return tuple(torch.load(tmp_path / r / "checkpoints" / "last.ckpt", weights_only=True)
                 for r in ("straight", "resumed"))


SUPPORTS = {"sltrain": "sparse_index", "lost": "sparse_columns"}


@pytest.mark.parametrize("name", sorted(EVENTS_EVERY_3))
def test_resume_matches_a_straight_run_and_a_sparse_support_never_moves(make_cfg, tmp_path, name):
    straight, resumed = straight_and_resumed(make_cfg, tmp_path, name)
    a, b = straight["state_dict"], resumed["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    state_a, state_b = straight["optimizer_states"][0]["state"], resumed["optimizer_states"][0]["state"]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[p][k], state_b[p][k]) for p in state_a for k in state_a[p])
    if name in SUPPORTS:
        middle = torch.load(tmp_path / "straight" / "checkpoints" / "step000004.ckpt", weights_only=True)
        middle = middle["state_dict"]
        keys = [k for k in middle if k.endswith(SUPPORTS[name])]
        assert len(keys) == 2
        for k in keys:
            assert torch.equal(middle[k], a[k]) and torch.equal(middle[k], b[k])  # fixed over steps 4-8, resumed
            values = k.replace(SUPPORTS[name], "sparse_values")
            assert not torch.equal(middle[values], a[values])  # while its values train


def test_pela_compresses_a_trained_run_and_distils_from_it(make_cfg, tmp_path):
    from lrlab.build import build_parts
    from lrlab.parametrizations.pela import DistilledLayer

    run(make_cfg("experiment=baseline/digits_mlp_adamw", "model.hidden=[32,32]", "trainer.max_steps=6",
                 "trainer.val_check_interval=6", run="dense"))
    ckpt = tmp_path / "dense" / "checkpoints" / "last.ckpt"
    weights = torch.load(ckpt, weights_only=True)["state_dict"]
    _, task = build_parts(make_cfg("experiment=pela/digits_mlp", "model.hidden=[32,32]", "parametrization.rank=5",
                                   f"parametrization.init_from={ckpt}"))
    layer = task.model.body[1]
    assert isinstance(layer, DistilledLayer) and layer.rank == 5
    assert torch.equal(layer.teacher_weight, weights["model.body.1.weight"])
    pela = task.methods[0]
    assert torch.equal(pela.teacher__head__weight, weights["model.head.weight"])
    best = torch.linalg.svd(weights["model.body.1.weight"])
    truncated = (best.U[:, :5] * best.S[:5]) @ best.Vh[:5]
    assert torch.allclose(layer.B @ layer.A, truncated, atol=1e-5)
