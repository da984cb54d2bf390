"""The method protocol through the core: task declarations refused up front, the one loss, hooks
called where the protocol says (features, sample weights, lr scale, trained entries)."""

import lightning as L
import pytest
import torch

from lrlab.build import build_parts
from lrlab.errors import ConfigError
from lrlab.losses.cross_entropy import CrossEntropy, causal_lm_cross_entropy
from lrlab.protocol import Method
from lrlab.train import run

DIGITS = "experiment=baseline/digits_mlp_adamw"
TINY_LM = ["experiment=baseline/llama_tiny_adamw", "data.max_tokens=60000", "data.seq_len=64"]


@pytest.mark.parametrize("override, key", [
    ("regularizer=elr", "regularizer.elr"),
    ("regularizer=nested_dropout", "regularizer.nested_dropout"),
    ("loss=stablemax", "loss"),
    ("loss=pskd", "loss"),
])
def test_a_method_on_a_task_it_does_not_support_is_refused_before_anything_is_written(make_cfg, tmp_path,
                                                                                      override, key):
    with pytest.raises(ConfigError, match=rf"^{key}=.*supports the classify task, not causal_lm"):
        run(make_cfg(*TINY_LM, override, "debug=smoke"))
    assert not (tmp_path / "run").exists()


def test_validate_checks_a_combination(capsys):
    from lrlab.validate import validate_presets

    assert validate_presets(["baseline/llama_tiny_adamw"], ["regularizer=elr"]) == ["baseline/llama_tiny_adamw"]
    assert "supports the classify task" in capsys.readouterr().out


def test_two_losses_cannot_be_composed(cli):
    code, _, err = cli("show", "loss=[pskd,stablemax]")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")


class Recorder(Method):
    """Weights samples, scales the lr and sees the features: records what the core hands it."""

    def __init__(self, keep: int, lr_scale: float):
        super().__init__()
        self.keep, self.scale = keep, lr_scale
        self.features_seen = 0
        self.steps: list[int] = []
        self.scaled: list[int] = []

    def transform_features(self, features):
        self.features_seen += 1
        return torch.zeros_like(features)

    def sample_weights(self, task, outputs, batch):
        weights = torch.zeros(len(batch["y"]))
        weights[: self.keep] = 1.0
        return weights

    def after_step(self, task, step):
        self.steps.append(step)

    def lr_scale(self, step):
        self.scaled.append(step)
        return self.scale


def test_hooks_are_called_where_the_protocol_says(make_cfg):
    datamodule, task = build_parts(make_cfg(DIGITS, "scheduler=constant", "scheduler.warmup_ratio=0"))
    recorder = Recorder(keep=3, lr_scale=0.5)
    task.methods.append(recorder)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    _, weighted = task.training_loss(task.forward_batch(batch), batch)
    first_three = torch.nn.functional.cross_entropy(task.model(batch["x"][:3])["logits"], batch["y"][:3])
    assert torch.allclose(weighted, first_three)
    L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              limit_val_batches=0).fit(task, datamodule=datamodule)
    assert recorder.steps == [0, 1, 2] and recorder.features_seen == 3  # 0-based index of the step just taken
    assert recorder.scaled == [1, 2, 3]  # the lr set after step k is the lr of step k + 1
    assert task.trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.5 * 1e-3)
    head = task.model.head
    assert not head._forward_pre_hooks  # the feature hook is removed after the fit
    x = batch["x"][:2]
    assert not torch.equal(task.model(x)["features"], torch.zeros_like(task.model(x)["features"]))


def test_causal_lm_cross_entropy_equals_the_models_own_loss():
    from lrlab.models.llama import build

    torch.manual_seed(0)
    model = build(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    ids = torch.randint(0, 50, (3, 9))
    labels = ids.clone()
    labels[0, 5:] = -100  # padding
    out = model(input_ids=ids, labels=labels)
    assert torch.equal(causal_lm_cross_entropy(out.logits, labels), out.loss)


def test_weighted_causal_lm_cross_entropy_is_a_mean_over_kept_tokens():
    torch.manual_seed(0)
    logits, ids = torch.randn(3, 5, 7), torch.randint(0, 7, (3, 5))
    task = type("Task", (), {"kind": "causal_lm"})()
    weighted = CrossEntropy()({"logits": logits}, {"labels": ids}, task, torch.tensor([1.0, 0.0, 1.0]))
    kept = causal_lm_cross_entropy(logits[[0, 2]], ids[[0, 2]])
    assert torch.allclose(weighted, kept)
