"""Training-dynamics measurements: RankMe, Softmax Collapse, memorisation of noisy labels."""

import pytest
import torch

from lrlab.callbacks.dynamics import collapsed_fraction, rankme, zero_loss_fraction
from lrlab.train import run


def test_rankme_counts_equal_directions():
    assert rankme(torch.eye(8)) == pytest.approx(8.0, rel=1e-4)
    assert rankme(torch.outer(torch.randn(20), torch.randn(5))) == pytest.approx(1.0, rel=1e-3)


def test_softmax_collapse_is_exact_zero_gradient():
    logits = torch.tensor([[200.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 200.0, 0.0]])
    # row 0: p_y rounds to 1.0 in float32 (collapsed); row 1 does not; row 2 is wrong (no collapse)
    assert collapsed_fraction(logits, torch.tensor([0, 0, 0])) == pytest.approx(1 / 3)


def test_zero_loss_comes_before_a_zero_gradient():
    logits = torch.tensor([[30.0, 0.0], [200.0, 0.0], [5.0, 0.0]])
    # a gap of 30: p_y = 1 in float32, so the loss is 0, but p_other ≈ 9e-14 is not 0
    labels = torch.tensor([0, 0, 0])
    assert zero_loss_fraction(logits, labels) == pytest.approx(2 / 3)
    assert collapsed_fraction(logits, labels) == pytest.approx(1 / 3)


def test_memorisation_and_rankme_reach_the_summary(make_cfg):
    summary = run(make_cfg("experiment=baseline/digits_mlp_adamw", "callbacks=noisy_labels", "debug=smoke",
                           "data.noise.kind=symmetric", "data.noise.rate=0.4"))
    final = summary["metrics"]["final"]
    assert 0 <= final["val/mem_noisy"] <= 1 and 0 <= final["val/mem_clean"] <= 1
    assert final["val/rankme"] > 1


def test_softmax_collapse_logged_for_grokking(make_cfg):
    summary = run(make_cfg("experiment=grokking/modadd_softmax", "debug=smoke"))
    assert 0 <= summary["metrics"]["final"]["val/softmax_collapse"] <= summary["metrics"]["final"]["val/zero_loss"] <= 1


def test_spectra_per_layer_file_and_means(make_cfg, tmp_path):
    import json

    summary = run(make_cfg("experiment=baseline/digits_mlp_adamw", "callbacks=spectra", "debug=smoke"))
    final = summary["metrics"]["final"]
    assert final["val/weight_erank"] > 1 and final["val/grad_nuclear"] > 0
    records = [json.loads(line) for line in (tmp_path / "run" / "spectra.jsonl").read_text().splitlines()]
    assert len(records) == 2 and {r["layer"] for r in records[0]["layers"]} == {
        "body.1.weight", "body.3.weight", "head.weight"}
    layer = records[-1]["layers"][0]
    assert 1 <= layer["weight_erank"] <= 64 and layer["grad_erank"] >= 1
