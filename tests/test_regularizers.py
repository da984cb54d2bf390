"""Regularizers, losses and ⊥Grad: hand-computed values, per-sample state, checkpoints, runner stacking."""

import io
import math
import re
from types import SimpleNamespace

import pytest
import torch

from lrlab.optim.orthograd import OrthoGrad, orthogonalize
from lrlab.regularizers.elr import ELR
from lrlab.regularizers.nested_dropout import NestedDropout, best_truncation, truncation_accuracies
from lrlab.regularizers.nuclear import NuclearNorm
from lrlab.losses.pskd import PSKD
from lrlab.losses.sd_guidance import GuidedSelfDistillation
from lrlab.losses.stablemax import StableMaxCE, log_stablemax, stablemax_s
from lrlab.train import run


def batch(y, index):
    return {"y": torch.tensor(y), "index": torch.tensor(index)}


def test_elr_target_update_and_term_by_hand():
    elr = ELR(weight=3.0, beta=0.7)
    elr.bind_data(num_samples=3, num_classes=2)
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    term = elr.loss_term(None, {"logits": logits}, batch([1], [2]))
    target = 0.3 * torch.tensor([0.25, 0.75])
    assert torch.allclose(elr.targets[2], target) and elr.targets[0].sum() == 0
    assert term.item() == pytest.approx(3.0 * math.log(1 - (0.25 * target[0] + 0.75 * target[1]).item()), rel=1e-6)
    elr.loss_term(None, {"logits": logits}, batch([1], [2]))
    assert torch.allclose(elr.targets[2], 0.7 * target + 0.3 * torch.tensor([0.25, 0.75]))


def test_elr_binds_to_any_known_dataset_size():
    elr = ELR()
    elr.bind_data(num_samples=3, num_classes=1)
    assert elr.targets.shape == (3, 1)


def test_elr_clamps_probabilities():
    elr = ELR()
    elr.bind_data(1, 2)
    elr.loss_term(None, {"logits": torch.tensor([[100.0, -100.0]])}, batch([0], [0]))
    assert elr.targets[0, 1] == pytest.approx(0.3 * 1e-4 / (1.0), rel=1e-3)


def test_elr_targets_are_each_rows_clamped_probabilities_normalised():
    """Three classes, two rows. Row 0 saturates: p = (1−1e-4, 1e-4, 1e-4) after the clamp, which sums
    to 1 + 1e-4, so t = 0.3·p/Σp differs from 0.3·p; row 1 is softmax (1/8, 2/8, 5/8)."""
    elr = ELR(weight=1.0, beta=0.7)
    elr.bind_data(num_samples=2, num_classes=3)
    logits = torch.tensor([[100.0, -100.0, -100.0], [0.0, math.log(2.0), math.log(5.0)]])
    elr.loss_term(None, {"logits": logits}, batch([0, 1], [0, 1]))
    saturated = torch.tensor([1 - 1e-4, 1e-4, 1e-4], dtype=torch.float64)
    expected = 0.3 * torch.stack([saturated / saturated.sum(), torch.tensor([1 / 8, 2 / 8, 5 / 8], dtype=torch.float64)])
    assert torch.allclose(elr.targets.double(), expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("build, line", [
    (lambda: ELR(beta=1.0), "regularizer.elr.beta=1.0: must be in [0, 1)"),
    (lambda: ELR().bind_data(0, 3), "regularizer='elr': needs a classification dataset with a known size"),
    (lambda: NuclearNorm(every=0), "regularizer.nuclear.every=0: must be an integer >= 1"),
    (lambda: NestedDropout(sigma=0), "regularizer.nested_dropout.sigma=0: must be > 0"),
])
def test_regularizer_bad_input_is_one_line(build, line):
    from lrlab.errors import ConfigError

    with pytest.raises(ConfigError, match="^" + re.escape(line) + "$"):
        build()


def test_pskd_alpha_schedule_and_targets():
    pskd = PSKD(alpha_T=0.8, epochs=4)
    pskd.bind_data(2, 3)
    assert [pskd.alpha(e, 4) for e in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    task = SimpleNamespace(current_epoch=0)
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    loss0 = pskd({"logits": logits}, batch([0], [1]), task)  # first visit: target = one-hot
    assert loss0.item() == pytest.approx(-logits.log_softmax(-1)[0, 0].item(), rel=1e-6)
    stored = logits.softmax(-1)[0]
    assert torch.allclose(pskd.predictions[1], stored)
    task.current_epoch = 1
    loss1 = pskd({"logits": torch.zeros(1, 3)}, batch([0], [1]), task)
    target = 0.6 * torch.tensor([1.0, 0, 0]) + 0.4 * stored
    assert loss1.item() == pytest.approx(-(target * torch.full((3,), -math.log(3))).sum().item(), rel=1e-6)


def test_guided_targets():
    sd = GuidedSelfDistillation(alpha=0.25)
    teacher = torch.tensor([[0.2, 0.8]])
    assert torch.allclose(sd.target(torch.tensor([0]), teacher, torch.tensor([True])), torch.tensor([[0.4, 0.6]]))
    assert torch.allclose(sd.target(torch.tensor([0]), teacher, torch.tensor([False])), torch.tensor([[1.0, 0.0]]))


def test_stablemax_values():
    x = torch.tensor([[2.0, 0.0, -1.0]])
    assert torch.allclose(stablemax_s(x), torch.tensor([[3.0, 1.0, 0.5]]))
    probs = log_stablemax(x).exp()
    assert probs.dtype == torch.float64 and torch.allclose(probs, torch.tensor([[3, 1, 0.5]], dtype=torch.float64) / 4.5)
    loss = StableMaxCE()({"logits": x}, batch([0], [0]), None)
    assert loss.item() == pytest.approx(-math.log(3 / 4.5), rel=1e-6)


def test_stablemax_loss_stays_float64_for_bf16_logits():
    # bf16 logits (as under autocast): log(4.5 / 3) = 0.405465... would round to 0.40625 in bf16
    x = torch.tensor([[2.0, 0.0, -1.0]], dtype=torch.bfloat16, requires_grad=True)
    loss = StableMaxCE()({"logits": x}, batch([0], [0]), None)
    assert loss.dtype == torch.float64 and loss.item() == pytest.approx(math.log(1.5), rel=1e-12)
    loss.backward()
    # d/dz_0 of -log(s_0/S) = -1/s_0 + 1/S = -1/3 + 1/4.5; d/dz_1 = 1/4.5; d/dz_2 = s'(-1)/S = (1/4)/4.5
    expected = torch.tensor([[-1 / 3 + 1 / 4.5, 1 / 4.5, 0.25 / 4.5]])
    assert x.grad.dtype == torch.bfloat16 and torch.allclose(x.grad.float(), expected, rtol=1e-2)


def test_stablemax_under_autocast_keeps_the_float64_loss():
    layer = torch.nn.Linear(2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(torch.randn(4, 2))
        loss = StableMaxCE()({"logits": logits}, batch([0, 1, 2, 0], [0, 1, 2, 3]), None)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float64
    z = logits.detach().double()
    s = torch.where(z >= 0, z + 1, 1 / (1 - z))
    by_hand = -torch.log(s[torch.arange(4), torch.tensor([0, 1, 2, 0])] / s.sum(1)).mean()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-12)


def test_nested_dropout_mask_distribution():
    nd = NestedDropout(sigma=10.0, per_sample=True)
    p = nd.distribution(64)
    expected = torch.exp(-(torch.arange(1, 65, dtype=torch.float64) / 10) ** 2)
    assert torch.equal(p, (expected / expected.sum()).float())  # formed in float64, rounded once
    torch.manual_seed(0)
    out = nd.transform_features(torch.ones(4000, 64))
    kept = out.sum(1)
    assert (out == torch.arange(64)[None, :].lt(kept[:, None]).float()).all()  # prefixes only
    assert kept.mean().item() == pytest.approx((p * torch.arange(1, 65)).sum().item(), rel=0.05)


def test_nested_dropout_shares_one_mask_unless_per_sample():
    torch.manual_seed(0)
    shared = NestedDropout(sigma=10.0).transform_features(torch.ones(50, 64))
    assert (shared == shared[0]).all() and 0 < shared[0].sum() < 64


def test_truncation_sweep_needs_a_head(make_task):
    import lightning as L

    from lrlab.errors import ConfigError
    from lrlab.regularizers.nested_dropout import TruncationSweep

    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"^callbacks\.truncation_sweep='Linear': a classifier with a `head` module$"):
        TruncationSweep().on_validation_epoch_end(trainer, make_task(torch.nn.Linear(4, 2)))


def test_nested_dropout_needs_a_head(make_task):
    from lrlab.errors import ConfigError

    method = NestedDropout()
    method.config_key = "regularizer"
    with pytest.raises(ConfigError) as refused:
        make_task(torch.nn.Sequential(torch.nn.Linear(4, 2)), [method]).on_fit_start()
    assert str(refused.value) == ("regularizer='nesteddropout': transforms a classifier's features, "
                                  "but Sequential has no `head` module")


def test_truncation_sweep_by_hand():
    head = torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
    features = torch.tensor([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [1.0, 0.0, 3.0], [0.5, 1.0, -2.0]])
    labels = torch.tensor([1, 0, 1, 1])
    # k = 1: logits (x0, 0): only sample 2 (label 0) right; k = 2: (x0, x1): samples 1, 2, 4;
    # k = 3: (x0, x1 + x2): samples 1, 2, 3
    accuracies = truncation_accuracies(head, features, labels)
    assert accuracies.tolist() == [0.25, 0.75, 0.75]
    assert best_truncation(accuracies) == (2, 0.75)  # the tie goes to fewer features
    assert best_truncation(torch.tensor([0.5, 0.75, 0.7, 0.8])) == (4, pytest.approx(0.8))


def test_nested_preset_logs_the_best_truncation_without_changing_training(make_cfg, tmp_path):
    summary = run(make_cfg("experiment=nested_dropout/mnist5k_sym40", "debug=smoke", run="swept"))
    final = summary["metrics"]["final"]
    assert summary["status"] == "completed" and final["val/best_k"] in range(1, 257)  # the MLP's 256 features
    assert 0 < final["val/acc_best_k"] <= 1
    run(make_cfg("experiment=nested_dropout/mnist5k_sym40", "debug=smoke", "~callbacks.truncation_sweep", run="plain"))
    a = torch.load(tmp_path / "swept" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "plain" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # a sweep at step 3 leaves steps 4 and 5 as they were


def test_nuclear_term_and_gradient_is_uv():
    layer = torch.nn.Linear(4, 6)
    task = SimpleNamespace(model=layer, global_step=0)
    term = NuclearNorm(weight=0.5).loss_term(task, {}, {})
    u, s, vh = torch.linalg.svd(layer.weight.detach(), full_matrices=False)
    assert term.item() == pytest.approx(0.5 * s.sum().item(), rel=1e-5)
    term.backward()
    assert torch.allclose(layer.weight.grad, 0.5 * u @ vh, atol=1e-5)
    assert NuclearNorm(every=2).loss_term(SimpleNamespace(model=layer, global_step=1), {}, {}) is None


def test_nuclear_norm_of_a_convolution_is_that_of_its_out_by_in_k_k_matrix():
    conv = torch.nn.Conv2d(3, 4, kernel_size=2)
    term = NuclearNorm(weight=1.0).loss_term(SimpleNamespace(model=conv, global_step=0), {}, {})
    expected = torch.linalg.svdvals(conv.weight.detach().reshape(4, 12)).sum()
    assert term.item() == pytest.approx(expected.item(), rel=1e-5)


def test_orthograd_build_passes_its_settings_and_names_bad_input():
    from lrlab.errors import ConfigError
    from lrlab.optim import orthograd

    model = torch.nn.Linear(4, 2)
    opt = orthograd.build(model, base="sgd", lr=0.3, momentum=0.5)
    assert isinstance(opt.base, torch.optim.SGD) and {(g["lr"], g["momentum"]) for g in opt.param_groups} == {(0.3, 0.5)}
    with pytest.raises(ConfigError, match=r"^optimizer\.base='lion': one of adamw, sgd$"):
        orthograd.build(model, base="lion")
    with pytest.raises(ConfigError, match=r"^optimizer\.lr=0: must be > 0$"):
        orthograd.build(model, lr=0)


def test_orthograd_is_orthogonal_and_keeps_the_norm():
    w, g = torch.randn(5, 3), torch.randn(5, 3)
    g_perp = orthogonalize(w, g)
    assert (w * g_perp).sum().abs() < 1e-5 and g_perp.norm().item() == pytest.approx(g.norm().item(), rel=1e-6)
    p = torch.nn.Parameter(w.clone())
    opt = OrthoGrad([p], torch.optim.SGD, lr=0.1)
    p.grad = g.clone()
    opt.step()
    assert torch.allclose(p.data, w - 0.1 * g_perp, atol=1e-6)


def test_per_sample_buffers_roundtrip_weights_only():
    elr, pskd = ELR(), PSKD(epochs=2)
    for method in (elr, pskd):
        method.bind_data(5, 3)
    elr.targets.uniform_()
    pskd.predictions.uniform_()
    pskd.seen[2] = True
    buffer = io.BytesIO()
    torch.save({"elr": elr.state_dict(), "pskd": pskd.state_dict()}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    elr2, pskd2 = ELR(), PSKD(epochs=2)
    elr2.bind_data(5, 3)
    pskd2.bind_data(5, 3)
    elr2.load_state_dict(loaded["elr"])
    pskd2.load_state_dict(loaded["pskd"])
    assert torch.equal(elr2.targets, elr.targets) and torch.equal(pskd2.predictions, pskd.predictions)
    assert torch.equal(pskd2.seen, pskd.seen)


def test_stacked_regularizers_through_the_runner(make_cfg):
    summary = run(make_cfg("experiment=baseline/digits_mlp_adamw", "regularizer=[elr,nuclear]", "debug=smoke"))
    assert summary["status"] == "completed"


def test_per_sample_state_resumes_exactly(make_cfg, tmp_path):
    n = 30  # > one epoch of digits at batch 64, so ELR targets and PS-KD predictions are live
    common = ["experiment=baseline/digits_mlp_adamw", "regularizer=elr", "loss=pskd", f"trainer.max_steps={2 * n}",
              "trainer.val_check_interval=30", f"callbacks.checkpoint.every_n_train_steps={n}",
              "callbacks.checkpoint.save_top_k=-1"]
    run(make_cfg(*common, run="straight"))
    mid = tmp_path / "straight" / "checkpoints" / f"step{n:06d}.ckpt"
    run(make_cfg(*common, f"ckpt_path={mid}", run="resumed"))
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert "methods.0.targets" in a and "loss.predictions" in a
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("preset", ["grokking/modadd_stablemax_orthograd", "grokking/modadd_softmax_wd",
                                    "grokking/modadd_stablemax", "pskd/digits_mlp", "sd_guidance/digits_mlp",
                                    "nuclear/digits_mlp"])
def test_presets_smoke(make_cfg, preset):
    assert run(make_cfg(f"experiment={preset}", "debug=smoke"))["status"] == "completed"


def test_stablemax_alone_is_the_papers_figure_1_run(make_cfg):
    cfg = make_cfg("experiment=grokking/modadd_stablemax")
    assert cfg.loss._target_.endswith("StableMaxCE") and cfg.optimizer._target_.endswith("adamw.build")
    assert list(cfg.optimizer.betas) == [0.9, 0.999] and cfg.optimizer.weight_decay == 0.0
    assert (cfg.optimizer.lr, cfg.trainer.max_steps, cfg.data.train_fraction) == (0.01, 80000, 0.4)


def test_heavy_wd_is_a_preset_of_adamw_decay(make_cfg):
    cfg = make_cfg("experiment=heavy_wd/llama_tiny_cpu")
    assert cfg.optimizer.weight_decay == 3.0 and cfg.optimizer._target_.endswith("adamw.build") and not cfg.regularizer
