"""Training-dynamics measurements: RankMe, Softmax Collapse, memorisation of noisy labels."""

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lrlab.callbacks.dynamics import Memorisation, RankMe, rankme, softmax_collapse_fraction, zero_gradient_fraction, zero_loss_fraction
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
    # a noisy row predicted as its noisy label is not predicted as its clean one
    assert final["val/mem_noisy"] >= 0 and final["val/mem_clean"] >= 0 and final["val/mem_noisy"] + final["val/mem_clean"] <= 1
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


class Logits(torch.nn.Module):
    """A classifier whose input is its logits and its penultimate features (a known answer per row)."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Identity()

    def forward(self, x):
        return {"logits": self.head(x), "features": x}


class Rows(L.LightningDataModule):
    """Hand-made train and validation splits of {x, y[, y_clean]} rows."""

    def __init__(self, train: list[dict], val: list[dict], num_classes: int):
        super().__init__()
        self.train_set, self.val_set, self.num_classes = train, val, num_classes
        self.num_train_samples = len(train)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=2)


def validate(train: list[dict], val: list[dict], callbacks=(), num_classes=3) -> dict[str, float]:
    """The metrics one real `Trainer.validate` logs for the Logits model on these rows."""
    from lrlab.losses.cross_entropy import CrossEntropy
    from lrlab.tasks.classify import ClassifyTask

    task = ClassifyTask(Logits(), loss=CrossEntropy(), methods=[], optimizer={}, scheduler={}, total_steps=1,
                        num_classes=num_classes)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks))
    (metrics,) = trainer.validate(task, datamodule=Rows(train, val, num_classes), verbose=False)
    return {k: float(v) for k, v in metrics.items()}


def row(logits: list[float], y: int, y_clean: int | None = None) -> dict:
    out = {"x": torch.tensor(logits), "y": torch.tensor(y)}
    return out if y_clean is None else {**out, "y_clean": torch.tensor(y_clean)}


# Predicted class = the position of the 5.0. Four noisy rows (y ≠ y_clean): rows 0 and 3 are predicted
# as their noisy label, row 1 as its clean label, row 2 as neither; row 4 is clean (not counted).
NOISY_TRAIN = [row([0, 5, 0], 1, 0), row([5, 0, 0], 2, 0), row([5, 0, 0], 1, 2), row([5, 0, 0], 0, 1),
               row([0, 5, 0], 0, 0)]


def test_memorisation_counts_noisy_rows_by_the_label_predicted():
    metrics = validate(NOISY_TRAIN, NOISY_TRAIN, [Memorisation()])
    assert metrics["val/mem_noisy"] == 2 / 4 and metrics["val/mem_clean"] == 1 / 4


def test_memorisation_logs_nothing_without_noisy_labels():
    clean = [row([5, 0, 0], 0, 0), row([0, 5, 0], 1, 1)]
    assert not {"val/mem_noisy", "val/mem_clean"} & set(validate(clean, clean, [Memorisation()]))


def test_rankme_of_known_singular_values():
    """Validation features with singular values (3, 1): p = (3/4, 1/4) (+1e-7),
    RankMe = exp(−¾·ln ¾ − ¼·ln ¼) = 1.7547654."""
    val = [row([3.0, 0.0], 0), row([0.0, 1.0], 1)]
    metrics = validate(val, val, [RankMe()], num_classes=2)
    assert metrics["val/rankme"] == pytest.approx(1.7547654, abs=1e-6)


def test_accuracy_ece_and_nll_of_known_confidences():
    """Two classes. Rows at confidence 0.9 (logits ln 9, 0), one right one wrong: a bin with
    |0.9 − ½| over 2 of 4 rows; rows at 0.7 (logits ln 7/3, 0), both right: |0.7 − 1| over 2 of 4.
    ECE = ½·0.4 + ½·0.3 = 0.35; accuracy ¾; NLL = −(ln 0.9 + ln 0.1 + 2·ln 0.7)/4."""
    val = [row([math.log(9), 0.0], 0), row([math.log(9), 0.0], 1), row([math.log(7 / 3), 0.0], 0),
           row([math.log(7 / 3), 0.0], 0)]
    metrics = validate(val, val, num_classes=2)
    assert metrics["val/acc"] == 0.75
    assert metrics["val/ece"] == pytest.approx(0.35, abs=1e-6)
    assert metrics["val/nll"] == pytest.approx(-(math.log(0.9) + math.log(0.1) + 2 * math.log(0.7)) / 4, abs=1e-6)
