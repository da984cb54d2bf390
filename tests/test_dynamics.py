"""Training-dynamics measurements: RankMe, Softmax Collapse, memorisation of noisy labels."""

import pytest
import torch

from lrlab.callbacks.dynamics import rankme, softmax_collapse_fraction, zero_gradient_fraction, zero_loss_fraction
from lrlab.train import run


def test_rankme_counts_equal_directions():
    assert rankme(torch.eye(8)) == pytest.approx(8.0, rel=1e-4)
    assert rankme(torch.outer(torch.randn(20), torch.randn(5))) == pytest.approx(1.0, rel=1e-3)


# Two-class rows [gap, 0]: float32 Σ exp(z − max z) = 1 + e^−gap, which rounds to 1 exactly when
# e^−gap ≤ 2^−24 ≈ 5.96e-8: gap 17 (e^−17 ≈ 4.1e-8) collapses, gap 16 (1.1e-7) does not. The
# gradient's other entry p = e^−gap is 0 only past float32's exp range (gap 200).
GAPS = torch.tensor([[17.0, 0.0], [16.0, 0.0], [0.0, 20.0], [2.0, 0.0], [200.0, 0.0]])
LABELS = torch.tensor([0, 0, 0, 0, 0])  # row 2 is collapsed onto the wrong class


def test_softmax_collapse_is_the_official_sum_of_exponentials_equal_to_one():
    assert softmax_collapse_fraction(GAPS) == pytest.approx(3 / 5)  # rows 0, 2, 4; labels play no part


def test_zero_loss_needs_the_collapse_on_the_true_class():
    assert zero_loss_fraction(GAPS, LABELS) == pytest.approx(2 / 5)  # rows 0 and 4


def test_zero_gradient_is_the_strictest():
    assert zero_gradient_fraction(GAPS, LABELS) == pytest.approx(1 / 5)  # row 4 only


def test_memorisation_and_rankme_reach_the_summary(make_cfg):
    summary = run(make_cfg("experiment=baseline/digits_mlp_adamw", "callbacks=noisy_labels", "debug=smoke",
                           "data.noise.kind=symmetric", "data.noise.rate=0.4"))
    final = summary["metrics"]["final"]
    assert 0 <= final["val/mem_noisy"] <= 1 and 0 <= final["val/mem_clean"] <= 1
    assert final["val/rankme"] > 1


def test_softmax_collapse_logged_for_grokking(make_cfg):
    summary = run(make_cfg("experiment=grokking/modadd_softmax", "debug=smoke"))
    final = summary["metrics"]["final"]
    # an all-zero gradient implies a zero loss and a collapse; those two sum their terms in
    # different orders, so neither bounds the other
    assert 0 <= final["val/zero_gradient"] <= min(final["val/zero_loss"], final["val/softmax_collapse"])
    assert max(final["val/zero_loss"], final["val/softmax_collapse"]) <= 1
    assert 0 <= final["val/softmax_collapse_val"] <= 1


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
