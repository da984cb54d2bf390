"""Weight parametrizations (lowrank, sltrain, lost, sst, maestro, pela, trp): each layer computes the
weight it represents, refactorization keeps the function, export gives the same dense model, the
method-specific rules hold on small tensors, and the summary counts follow from the shapes."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrlab.build import build_parts
from lrlab.errors import ConfigError
from lrlab.models.classifier import cnn, mlp
from lrlab.models.llama import build as llama
from lrlab.parametrizations.base import Factorized, MatrixLayer
from lrlab.parametrizations.maestro import OrderedLayer
from lrlab.parametrizations.pela import DistilledLayer, pela_rank
from lrlab.parametrizations.sltrain import SparseLowRankLayer, SparsePlusLowRank
from lrlab.parametrizations.sst import SpectralLayer
from lrlab.train import run

SETTINGS = {  # small enough for the tiny models below
    "lowrank": {"rank": 4}, "sltrain": {"rank": 4, "density": 0.1}, "lost": {"rank": 4, "channel_fraction": 0.2},
    "sst": {"rank": 4}, "maestro": {}, "pela": {},
}


def tiny_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return mlp(16, 3, hidden=(32, 24))
    if kind == "cnn":
        return cnn(2, 3, channels=(12, 10))  # PELA keeps layers of < 10 outputs dense
    return llama(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


def tiny_input(kind: str) -> torch.Tensor:
    torch.manual_seed(1)
    if kind == "mlp":
        return torch.randn(5, 16)
    if kind == "cnn":
        return torch.randn(2, 2, 8, 8)
    return torch.randint(0, 50, (2, 7))


def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)["logits"] if x.dtype.is_floating_point else model(input_ids=x).logits


def layer_input(layer: MatrixLayer) -> torch.Tensor:
    torch.manual_seed(2)
    if layer.kernel is None:
        return torch.randn(3, 4, layer.in_features)
    return torch.randn(2, layer.kernel["shape"][1], 7, 7)


def dense_reference(layer: MatrixLayer, x: torch.Tensor) -> torch.Tensor:
    if layer.kernel is None:
        return F.linear(x, layer.matrix(), layer.bias)
    return layer.convolve(x, layer.matrix(), layer.bias)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "llama"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_each_layer_computes_the_dense_weight_it_represents(method, name, kind):
    model = method("parametrization", name, **SETTINGS[name]).transform_model(tiny_model(kind)).eval()
    layers = [m for m in model.modules() if isinstance(m, MatrixLayer)]
    assert layers
    for layer in layers:
        x = layer_input(layer)
        assert torch.allclose(layer(x), dense_reference(layer, x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["mlp", "cnn", "llama"])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_export_gives_a_dense_model_with_the_same_outputs(method, name, kind):
    parametrization = method("parametrization", name, **SETTINGS[name])
    model = parametrization.transform_model(tiny_model(kind)).eval()
    x = tiny_input(kind)
    before = outputs(model, x)
    exported = parametrization.export(model)
    assert not any(isinstance(m, MatrixLayer) for m in exported.modules())
    assert all(p.ndim < 2 or isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding))
               for m in exported.modules() for p in m.parameters(recurse=False))
    assert torch.allclose(outputs(exported, x), before, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("init", ["kaiming", "svd"])
def test_refactorization_keeps_the_function_and_balances_the_factors(init):
    torch.manual_seed(0)
    for base in (nn.Linear(12, 9), nn.Conv2d(3, 7, 3, padding=1)):
        layer = Factorized(base, rank=4, scale=0.5, init=init)
        x = layer_input(layer)
        before, product = layer(x), layer.B @ layer.A
        layer.rebalance()
        assert torch.allclose(layer(x), before, atol=1e-5)
        assert torch.allclose(layer.B @ layer.A, product, atol=1e-5)
        sigma = torch.linalg.svdvals(product)[:4]
        assert torch.allclose(layer.B.T @ layer.B, torch.diag(sigma), atol=1e-5)  # B = U√Σ
        assert torch.allclose(layer.A @ layer.A.T, torch.diag(sigma), atol=1e-5)  # A = √Σ Vᵀ


def test_sparse_plus_low_rank_backward_is_the_gradient_of_its_forward():
    torch.manual_seed(0)
    layer = SparseLowRankLayer(nn.Linear(6, 5, dtype=torch.float64), rank=2, scale=0.7, density=0.3)
    nn.init.normal_(layer.B)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    inputs = (x, layer.B, layer.A, layer.sparse_values, layer.sparse_index, layer.bias, 0.7)
    assert torch.autograd.gradcheck(SparsePlusLowRank.apply, inputs)
    assert layer.sparse_index.dtype == torch.int32 and layer.sparse_values.numel() == int(0.3 * 30)


def test_sst_enhanced_gradient_drops_the_singular_value_factor():
    torch.manual_seed(0)
    layer = SpectralLayer(nn.Linear(6, 5, bias=False), rank=2, enhanced_gradient=True)
    x = torch.randn(4, 6)
    upstream = torch.randn(4, 5)
    (layer(x) * upstream).sum().backward()
    grad_w = upstream.T @ x  # dL/dW
    columns = layer.active
    u, v = layer.u_active.detach(), layer.v_active.detach()
    assert torch.allclose(layer.u_active.grad, grad_w @ v, atol=1e-5)
    assert torch.allclose(layer.v_active.grad, grad_w.T @ u, atol=1e-5)
    assert torch.allclose(layer.sigma.grad, (layer.u.T @ grad_w @ layer.v).diagonal(), atol=1e-5)
    assert torch.equal(layer.sigma.grad.index_select(0, columns), (u * (grad_w @ v)).sum(0))


def test_sst_resvd_and_resampling_keep_the_function():
    torch.manual_seed(0)
    layer = SpectralLayer(nn.Linear(8, 6), rank=3, enhanced_gradient=True)
    with torch.no_grad():
        layer.u_active.add_(0.1)
        layer.sigma.mul_(1.5)
    x = layer_input(layer)
    before = layer(x)
    layer.resvd()
    assert torch.allclose(layer(x), before, atol=1e-5)
    assert torch.allclose(layer.u.T @ layer.u, torch.eye(6), atol=1e-5)  # orthonormal again
    layer.resample(torch.Generator().manual_seed(0))
    assert torch.allclose(layer(x), before, atol=1e-5)
    assert torch.equal(layer.u_active, layer.u[:, layer.active])


def test_lowrank_rewarm_runs_from_a_thousandth_to_one_after_each_reset(method):
    lowrank = method("parametrization", "lowrank", rank=4, refactorize_every=20, rewarm_steps=10)
    assert [lowrank.lr_scale(s) for s in (0, 5, 19)] == [1.0, 1.0, 1.0]  # nothing before the first reset
    assert lowrank.lr_scale(20) == pytest.approx(1e-3) and lowrank.lr_scale(40) == pytest.approx(1e-3)
    assert lowrank.lr_scale(25) == pytest.approx(1e-3 + (1 - 1e-3) * 5 / 9)
    assert lowrank.lr_scale(29) == 1.0 and lowrank.lr_scale(30) == 1.0
    off = method("parametrization", "lowrank", rank=4)
    assert off.lr_scale(20) == 1.0


class StepRecorder(L.Callback):
    def __init__(self):
        self.lrs, self.states = [], []

    def on_before_optimizer_step(self, trainer, task, optimizer):
        self.lrs.append(optimizer.param_groups[0]["lr"])
        self.states.append(len(optimizer.state))


def test_lowrank_refactorization_resets_every_moment_and_rewarms_the_lr(make_cfg):
    cfg = make_cfg("experiment=lowrank/digits_mlp", "parametrization.refactorize_every=3",
                   "parametrization.rewarm_steps=3", "scheduler=constant", "scheduler.warmup_ratio=0")
    datamodule, task = build_parts(cfg)
    recorder = StepRecorder()
    L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
              callbacks=[recorder]).fit(task, datamodule=datamodule)
    lr = cfg.optimizer.lr
    scale = [1, 1, 1, 1e-3, 1e-3 + (1 - 1e-3) / 2, 1]
    assert recorder.lrs == pytest.approx([lr * s for s in scale])
    parameters = sum(1 for p in task.model.parameters())
    # the state is empty when the first step after a reset begins (created lazily during it)
    assert recorder.states == [0, parameters, parameters, 0, parameters, parameters]
    assert not task.trainer.optimizers[0].state  # the reset after the last step
    factorized = [m for m in task.model.modules() if isinstance(m, Factorized)]
    for layer in factorized:  # re-balanced after the last step
        gram = layer.B.T @ layer.B
        assert torch.allclose(gram, layer.A @ layer.A.T, atol=1e-5)
        assert torch.allclose(gram, torch.diag(gram.diagonal()), atol=1e-5)
    assert len(factorized) == 2


SMALL_MLP = ["model.hidden=[32,32]", "trainer.max_steps=5", "trainer.val_check_interval=5", "callbacks=none"]
SHAPES = [(32, 64), (32, 32)]  # the body's linears on digits (64 inputs); the head 10 x 32 stays dense
HEAD = 10 * 32 + 10


def counts(name: str) -> tuple[int, int, int]:
    """(total entries, trained entries, trained tensors) of the parametrized MLP, from the shapes."""
    total = trained = tensors = 0
    for m, n in SHAPES:
        k = min(m, n)
        per_layer = {
            "lowrank": (m * 4 + 4 * n, None, 2),
            "sltrain": (m * 4 + 4 * n + int(0.1 * m * n), None, 3),
            "lost": (m * 4 + 4 * n + m * math.ceil(0.1 * n), None, 3),
            "sst": (m * k + n * k + k + (m + n) * 4, k + (m + n) * 4, 3),
            "maestro": (m * k + k * n, None, 2),
            "pela": ((m + n) * pela_rank(m, n, 2.0), None, 2),
            "trp": (m * n, None, 1),
        }[name]
        layer_total, layer_trained, layer_tensors = per_layer
        total += layer_total + m
        trained += (layer_total if layer_trained is None else layer_trained) + m
        tensors += layer_tensors + 1
    return total + HEAD, trained + HEAD, tensors + 2


SUMMARY_OVERRIDES = {
    "lowrank": ["parametrization.rank=4"], "sltrain": ["parametrization.rank=4", "parametrization.density=0.1"],
    "lost": ["parametrization.rank=4", "parametrization.channel_fraction=0.1"], "sst": ["parametrization.rank=4"],
    "maestro": ["parametrization.threshold=0"], "pela": [], "trp": [],
}


@pytest.mark.parametrize("name", sorted(SUMMARY_OVERRIDES))
def test_summary_counts_follow_from_the_shapes(make_cfg, name):
    summary = run(make_cfg("experiment=baseline/digits_mlp_adamw", f"parametrization={name}", *SMALL_MLP,
                           *SUMMARY_OVERRIDES[name]))
    total, trained, tensors = counts(name)
    assert summary["total_params"] == total and summary["trainable_params"] == trained
    # torch AdamW: two fp32 moments per trained entry and a fp32 step count per tensor
    assert summary["optimizer_state_bytes"] == 8 * trained + 4 * tensors


def test_maestro_counts_only_active_components(method, make_task):
    maestro = method("parametrization", "maestro")
    model = maestro.transform_model(tiny_model("mlp"))
    layer = model.body[1]
    layer.active[10:] = False
    entries = maestro.trained_entries(model)
    assert entries["body.1.A"] == 10 * 16 and entries["body.1.B"] == 32 * 10
    task = make_task(model, [maestro])
    assert task.trainable_params() == sum(p.numel() for p in model.parameters()) - 6 * (16 + 32)


def test_maestro_ordered_dropout_uses_a_prefix_of_the_active_components(method):
    torch.manual_seed(0)
    layer = OrderedLayer(nn.Linear(10, 8))
    layer.active[2] = False
    layer.width.fill_(3)
    x = layer_input(layer)
    keep = torch.tensor([1, 1, 0, 1, 0, 0, 0, 0], dtype=torch.float32)  # first three active ones
    expected = F.linear(x, (layer.B * keep) @ layer.A, layer.bias)
    assert torch.allclose(layer.train()(x), expected, atol=1e-5)
    full = torch.tensor([1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.float32)
    assert torch.allclose(layer.eval()(x), F.linear(x, (layer.B * full) @ layer.A, layer.bias), atol=1e-5)


def test_maestro_group_lasso_and_shrinking_follow_the_tail_norms(method):
    maestro = method("parametrization", "maestro", group_lasso=0.1, threshold=0.05)
    model = maestro.transform_model(tiny_model("mlp"))
    layers = [m for m in model.modules() if isinstance(m, OrderedLayer)]
    with torch.no_grad():
        layers[0].A[20:] *= 1e-3
        layers[0].B[:, 20:] *= 1e-3
    expected = 0.0
    for layer in layers:
        for i in range(layer.rank):
            expected += layer.A[i:].norm() + layer.B[:, i:].norm()
    task = type("Task", (), {"model": model})()
    assert torch.allclose(maestro.loss_term(task, {}, {}), 0.1 * expected, rtol=1e-5)
    maestro.shrink(model)
    importance = [(layers[0].A[i:].norm() * layers[0].B[:, i:].norm()).item() for i in range(layers[0].rank)]
    assert layers[0].active.tolist() == [v >= 0.05 for v in importance]
    assert not layers[0].active[20:].any() and layers[0].active[:20].all() and layers[1].active.all()


def test_maestro_samples_one_layer_per_step_the_same_way_on_every_run(method):
    maestro = method("parametrization", "maestro", seed=3)
    model = maestro.transform_model(tiny_model("mlp"))
    widths = {}
    for step in range(20):
        maestro.sample(model, step)
        drawn = [int(m.width) for m in model.modules() if isinstance(m, OrderedLayer)]
        assert sum(w > 0 for w in drawn) == 1
        widths[step] = drawn
    maestro.sample(model, 7)
    assert [int(m.width) for m in model.modules() if isinstance(m, OrderedLayer)] == widths[7]
    assert len({tuple(w) for w in widths.values()}) > 5


def test_trp_truncates_to_the_energy_rank_and_adds_the_nuclear_subgradient(method):
    torch.manual_seed(0)
    model = tiny_model("cnn")
    originals = [m.weight.detach().flatten(1).clone() for m in model.body if isinstance(m, nn.Conv2d)]
    trp = method("parametrization", "trp", energy=0.9, nuclear_weight=0.5, period=2)
    model = trp.transform_model(model)
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    for conv, original, k in zip(convs, originals, trp.ranks.tolist()):
        s = torch.linalg.svdvals(original)
        assert (s[:k] ** 2).sum() / (s ** 2).sum() >= 0.9 > (s[:k - 1] ** 2).sum() / (s ** 2).sum()
        assert torch.linalg.matrix_rank(conv.weight.flatten(1), atol=1e-4) == k
    task = type("Task", (), {"model": model, "global_step": 2})()
    term = trp.loss_term(task, {}, {})
    term.backward()
    for conv, k in zip(convs, trp.ranks.tolist()):
        u, s, vh = torch.linalg.svd(conv.weight.detach().flatten(1))
        assert torch.allclose(conv.weight.grad.flatten(1), 0.5 * u[:, :k] @ vh[:k], atol=1e-4)
    task.global_step = 3
    assert trp.loss_term(task, {}, {}) is None


def test_pela_factorizes_to_its_rank_and_its_teacher_is_the_original_model(method, make_task):
    original = tiny_model("mlp")
    x = tiny_input("mlp")
    expected = original(x)["logits"].detach()
    teacher_features, h = [], x
    for module in original.body:
        h = module(h)
        if isinstance(module, nn.ReLU):
            teacher_features.append(h.detach())
    pela = method("parametrization", "pela", compression_ratio=2.0, perturbation_weight=1.0)
    model = pela.transform_model(tiny_model("mlp"))
    layers = [m for m in model.modules() if isinstance(m, DistilledLayer)]
    assert [layer.rank for layer in layers] == [pela_rank(32, 16, 2.0), pela_rank(24, 32, 2.0)] == [5, 6]
    with torch.no_grad():
        model.head.weight.add_(1.0)
        layers[0].bias.add_(1.0)
    task = make_task(model, [pela])
    assert torch.allclose(pela.teacher_outputs(task, {"x": x})["logits"], expected, atol=1e-6)
    batch = {"x": x, "y": torch.zeros(5, dtype=torch.long)}
    model.train()
    student = task.forward_batch(batch)
    student_features = [f.detach() for f in pela._features["student"]]
    term = pela.loss_term(task, student, batch)
    assert len(student_features) == 2
    perturbation = sum(((l.B @ l.A - l.teacher_weight).abs().max() - 1e-3) ** 2 for l in layers) / 2
    distillation = sum(F.mse_loss(s, t) for s, t in zip(student_features, teacher_features)) / 2
    assert torch.allclose(term, distillation + perturbation, rtol=1e-5)


def test_settings_that_do_not_fit_are_refused_with_one_line(method):
    with pytest.raises(ConfigError, match=r"^parametrization\.rank=20: at most 16, the smaller side of body\.1"):
        method("parametrization", "lowrank", rank=20).transform_model(tiny_model("mlp"))
    with pytest.raises(ConfigError, match=r"^parametrization\.resvd_every=30: 0 or a multiple"):
        method("parametrization", "sst", resample_every=20, resvd_every=30)
    with pytest.raises(ConfigError, match=r"^parametrization\.target_modules=\['nothing'\]: match no"):
        method("parametrization", "sltrain", target_modules=["nothing"]).transform_model(tiny_model("mlp"))
    with pytest.raises(ConfigError, match=r"^parametrization\.init_from='/nonexistent.ckpt'"):
        method("parametrization", "pela", init_from="/nonexistent.ckpt").transform_model(tiny_model("mlp"))


@pytest.mark.parametrize("make", [lambda base: SpectralLayer(base, rank=3, enhanced_gradient=True),
                                  lambda base: SparseLowRankLayer(base, rank=3, scale=1.0, density=0.2)],
                         ids=["sst", "sltrain"])
def test_custom_backward_runs_under_bf16_autocast(make):
    """The trainers' bf16-mixed precision: the custom functions' gradients reach fp32 parameters."""
    torch.manual_seed(0)
    layer = make(nn.Linear(8, 6))
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    out.float().sum().backward()  # outside autocast, as Lightning's precision plugin runs it
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
