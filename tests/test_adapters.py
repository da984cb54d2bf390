"""Adapters on the tiny MLP: counts, the pre-trained function at the start, merges, the ALLoRA
coefficient, SVFit's spectrum, default targets, bad input."""

import io
import math

import pytest
import torch

from conftest import TARGETS
from lrlab.adapters import allora
from lrlab.adapters.base import default_targets, off_identity
from lrlab.errors import ConfigError
from lrlab.models.classifier import mlp

HEAD = 32 * 3 + 3


def trainable(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def logits(model, x):
    return model(x)["logits"]


@pytest.mark.parametrize("name, expected", [
    ("lora", 4 * (16 + 32) + 4 * (32 + 32)),
    ("rslora", 4 * (16 + 32) + 4 * (32 + 32)),
    ("pissa", 4 * (16 + 32) + 4 * (32 + 32)),
    ("dora", 4 * (16 + 32) + 4 * (32 + 32) + 32 + 32),
    ("miss", 4 * 32 + 4 * 32),
])
def test_peft_trainable_counts(method, tiny, name, expected):
    model = method("adapter", name, target_modules=TARGETS, r=4).transform_model(tiny())
    assert trainable(model) == expected + HEAD  # the fresh head trains by default


def test_adalora_counts_hooks_and_penalty(method, tiny, make_task):
    adalora = method("adapter", "adalora", target_modules=TARGETS, total_steps=20, init_r=6, target_r=2)
    model = adalora.transform_model(tiny())
    task = make_task(model, [adalora])
    assert trainable(model) == (6 * 16 + 32 * 6 + 6) + (6 * 32 + 32 * 6 + 6) + HEAD
    penalty = adalora.loss_term(task, None, None)
    a, b = model.base_model.model.body[1].lora_A["default"], model.base_model.model.body[1].lora_B["default"]
    eye = torch.eye(6)
    first_layer = torch.linalg.norm(a @ a.T - eye) + torch.linalg.norm(b.T @ b - eye)
    assert 0.5 * first_layer < penalty and penalty.requires_grad  # 0.5: orth_reg_weight; two layers' terms
    x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(20):
        loss = torch.nn.functional.cross_entropy(logits(model, x), y) + adalora.loss_term(task, None, None)
        loss.backward()
        opt.step()
        adalora.after_step(task, step)
        opt.zero_grad()
    kept = sum(int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n)
    assert kept == 2 * 2  # the rank budget (target_r per layer) is reached by the schedule's end


def test_pissa_starts_at_the_pretrained_function(method, tiny):
    x = torch.randn(5, 16)
    expected = logits(tiny(), x)
    model = method("adapter", "pissa", target_modules=TARGETS, r=4).transform_model(tiny())
    assert torch.allclose(logits(model, x), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["lora", "dora", "pissa", "miss"])
def test_peft_merge_equivalence(method, tiny, name):
    adapter = method("adapter", name, target_modules=TARGETS, r=4)
    model = adapter.transform_model(tiny())
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(5, 16)
    before = logits(model, x)
    merged = adapter.export(model)
    assert not any("lora" in n or "miss" in n for n, _ in merged.named_parameters())
    assert torch.allclose(logits(merged, x), before, atol=1e-5)


def test_peft_save_load_round_trip(method, tiny):
    model = method("adapter", "lora", target_modules=TARGETS, r=4).transform_model(tiny())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    torch.manual_seed(1)  # other base weights and factors: the load must restore all of them
    fresh = method("adapter", "lora", target_modules=TARGETS, r=4).transform_model(mlp(16, 3, hidden=(32, 32)))
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(4, 16)
    assert torch.equal(logits(fresh, x), logits(model, x))


def test_allora_coefficient_on_hand_made_rows():
    factor = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    coeff = allora.row_coefficient(factor, eta=2.0, norm_dim=1)
    assert torch.allclose(coeff.squeeze(), torch.tensor([1 / (25 + 0.25) ** 0.5, 2.0]))
    column = allora.row_coefficient(factor, eta=2.0, norm_dim=0)
    assert torch.allclose(column.squeeze(), torch.tensor([1 / (9.25) ** 0.5, 1 / (16.25) ** 0.5]))


def test_allora_factor_rows_scales_each_factor_row(method, tiny):
    model = method("adapter", "allora", target_modules=TARGETS, r=4, eta_squared=9.0,
                   form="factor_rows").transform_model(tiny())
    assert trainable(model) == 4 * (16 + 32) + 4 * (32 + 32) + HEAD
    layer = model.body[1]
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn_like(layer.lora_B))
    x = torch.randn(6, 16)
    handle_free = layer.lora_B.detach().clone().requires_grad_(True)
    y = model.body[2](layer.base(x) + (x @ layer.lora_A.detach().T) @ handle_free.T)
    rest = model.head(model.body[4](model.body[3](y)))
    unscaled = torch.autograd.grad(rest.sum(), handle_free)[0]
    logits(model, x).sum().backward()
    by_hand = 1 / (layer.lora_B.detach().pow(2).sum(1, keepdim=True) + 1 / 9.0).sqrt()  # eta = 3
    assert torch.allclose(layer.lora_B.grad, unscaled * by_hand, atol=1e-6)


def test_allora_output_rows_scales_the_output_gradient_by_the_rows_of_ba(method):
    """g_i / sqrt(||(BA)_i|| + 1/eta^2) on the adapter output, before dA and dB are formed."""
    base = torch.nn.Linear(3, 2, bias=False)
    model = torch.nn.Sequential(base)
    adapter = method("adapter", "allora", target_modules=["0"], r=2, eta_squared=4.0, train_also=[])
    layer = adapter.transform_model(model)[0]
    a = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[3.0, 4.0], [0.0, 0.0]])  # BA rows: [3, 4, 6] (norm sqrt 61) and [0, 0, 0]
    with torch.no_grad():
        layer.lora_A.copy_(a)
        layer.lora_B.copy_(b)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    upstream = torch.tensor([[0.5, -1.0]])  # dL/dy for L = y . upstream
    (layer(x) * upstream).sum().backward()
    c = torch.tensor([1 / math.sqrt(math.sqrt(61) + 0.25), 1 / math.sqrt(0 + 0.25)])
    g = upstream * c  # [[0.5 c0, -2.0]]
    ax = torch.tensor([[7.0, 2.0]])  # A x
    assert torch.allclose(layer.lora_B.grad, g.T @ ax, atol=1e-6)  # dB = g (A x)^T
    assert torch.allclose(layer.lora_A.grad, b.T @ g.T @ x, atol=1e-6)  # dA = B^T g x^T
    assert allora.output_row_coefficient(layer.lora_A, layer.lora_B, 4.0) == pytest.approx(c.tolist(), rel=1e-6)


def test_allora_output_rows_at_initialisation_scales_by_eta(method, tiny):
    model = method("adapter", "allora", target_modules=TARGETS, r=4, eta_squared=2.0).transform_model(tiny())
    plain = method("adapter", "allora", target_modules=TARGETS, r=4, eta_squared=1.0).transform_model(tiny())
    x = torch.randn(6, 16)
    for m in (model, plain):
        logits(m, x).sum().backward()
    # B = 0, so BA = 0 and every output row's coefficient is eta = sqrt(2) (1 for eta^2 = 1)
    assert torch.allclose(model.body[3].lora_B.grad, math.sqrt(2) * plain.body[3].lora_B.grad, atol=1e-6)


def test_allora_merge_equivalence(method, tiny):
    adapter = method("adapter", "allora", target_modules=TARGETS, r=4)
    model = adapter.transform_model(tiny())
    with torch.no_grad():
        for m in (model.body[1], model.body[3]):
            m.lora_B.copy_(torch.randn_like(m.lora_B))
    x = torch.randn(5, 16)
    before = logits(model, x)
    assert torch.allclose(logits(adapter.export(model), x), before, atol=1e-5)


def test_svfit_trains_only_top_singular_values(method, tiny):
    adapter = method("adapter", "svfit", target_modules=TARGETS, spectrum=0.99, train_also=[])
    model = adapter.transform_model(tiny())
    ranks = [model.body[i].singular_values.numel() for i in (1, 3)]
    assert trainable(model) == sum(ranks)
    for i, layer in ((1, model.body[1]), (3, model.body[3])):
        s = torch.linalg.svdvals(tiny().body[i].weight.detach())
        share = s.cumsum(0) / s.sum()
        assert share[ranks[(i - 1) // 2] - 1] >= 0.99 and (ranks[(i - 1) // 2] == 1 or share[ranks[(i - 1) // 2] - 2] < 0.99)
    x = torch.randn(5, 16)
    assert torch.allclose(logits(model, x), logits(tiny(), x), atol=1e-5)
    assert torch.allclose(logits(adapter.export(model), x), logits(tiny(), x), atol=1e-5)


@pytest.mark.parametrize("measure, rank", [("sum", 3), ("energy", 2)])
def test_svfit_measure_is_the_sum_or_the_energy_of_the_spectrum(method, measure, rank):
    # s = 3, 2, 1, 0.5. Sum shares: 3/6.5, 5/6.5, 6/6.5 = 0.92 (>= 0.9 at r = 3).
    # Energy shares: 9/14.25, 13/14.25 = 0.91 (>= 0.9 at r = 2).
    model = torch.nn.Sequential(torch.nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5])))
    adapter = method("adapter", "svfit", target_modules=["0"], spectrum=0.9, measure=measure, train_also=[])
    layer = adapter.transform_model(model)[0]
    assert layer.singular_values.numel() == rank
    assert torch.allclose(layer.singular_values, torch.tensor([3.0, 2.0, 1.0])[:rank])


def test_default_targets_per_architecture(tiny):
    from lrlab.models.classifier import cnn
    from lrlab.models.llama import build

    assert default_targets(tiny()) == TARGETS  # every linear of an MLP's body
    assert default_targets(cnn(1, 3, channels=(4, 8))) == ["body.0", "body.4"]  # its convolutions
    llama = build(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    assert default_targets(llama) == ["q_proj", "v_proj"]  # PEFT's table


@pytest.mark.parametrize("name, settings, key", [
    ("lora", {"r": 0}, "adapter.r"),
    ("lora", {"r": 17}, "adapter.r"),  # larger than the 16-wide input of body.1
    ("allora", {"target_modules": ["nope"]}, "adapter.target_modules"),
    ("svfit", {"spectrum": 1.5}, "adapter.spectrum"),
    ("svfit", {"measure": "max"}, "adapter.measure"),
    ("allora", {"form": "columns"}, "adapter.form"),
    ("allora", {"eta_squared": 0.0}, "adapter.eta_squared"),
    ("lift", {"select": "random"}, "adapter.select"),
    ("sara", {"penalty": "l1"}, "adapter.penalty"),
    ("sara", {"schedule": "sometimes"}, "adapter.schedule"),
])
def test_bad_input_is_a_config_error(method, tiny, name, settings, key):
    with pytest.raises(ConfigError) as refused:
        method("adapter", name, **{"target_modules": TARGETS, **settings}).transform_model(tiny())
    assert refused.value.key == key


@pytest.mark.parametrize("name, settings", [
    ("lora", {"r": 1}), ("lora", {"r": 16}),  # 16: the width of body.1's input
    ("lift", {"lora_rank": 1, "filter_rank": 1, "refresh_every": 1}),
    ("sara", {"reselect_every": 1, "progressive_iter": 1}),
])
def test_values_on_a_bound_are_accepted(method, tiny, name, settings):
    model = method("adapter", name, **{"target_modules": TARGETS, **settings}).transform_model(tiny())
    assert trainable(model) > HEAD


@pytest.mark.parametrize("name, settings", [("lora", {"r": 4}), ("miss", {"r": 4}),
                                            ("adalora", {"total_steps": 20, "init_r": 6, "target_r": 2})])
def test_an_empty_train_also_leaves_the_head_frozen(method, tiny, name, settings):
    trains_head = method("adapter", name, target_modules=TARGETS, **settings).transform_model(tiny())
    frozen_head = method("adapter", name, target_modules=TARGETS, train_also=[], **settings).transform_model(tiny())
    assert trainable(trains_head) - trainable(frozen_head) == HEAD


def test_adalora_schedule_settings_reach_peft(method, tiny):
    settings = dict(total_steps=40, init_r=6, target_r=2, tinit=3, tfinal=5, delta_t=4, beta1=0.7, beta2=0.6,
                    orth_reg_weight=0.25, alpha=8.0)
    model = method("adapter", "adalora", target_modules=TARGETS, **settings).transform_model(tiny())
    config = model.peft_config["default"]
    assert (config.total_step, config.init_r, config.target_r, config.tinit, config.tfinal, config.deltaT,
            config.beta1, config.beta2, config.orth_reg_weight, config.lora_alpha) == \
        (40, 6, 2, 3, 5, 4, 0.7, 0.6, 0.25, 8.0)


def test_an_exported_peft_adapter_carries_its_trained_head(method, tiny, tmp_path):
    from peft import PeftModel

    adapter = method("adapter", "lora", target_modules=TARGETS, r=4)
    model = adapter.transform_model(tiny())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:  # the LoRA factors and the head, as training would leave them
                p.add_(0.1 * torch.randn_like(p))
    adapter.export_adapter(model).save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny(), tmp_path)
    x = torch.randn(5, 16)
    assert torch.equal(logits(reloaded, x), logits(model, x))


@pytest.mark.parametrize("dtype, rel", [(torch.float64, 1e-15), (torch.bfloat16, 2**-8)])  # rel: half a unit in the last place
def test_orthogonality_penalty_is_the_distance_to_identity_in_the_factors_dtype(dtype, rel):
    gram = torch.tensor([[1.0, 0.5], [0.5, 3.0]], dtype=dtype)  # off the identity by 0.5, 0.5 and 2: sqrt(4.5)
    penalty = off_identity(gram)
    assert penalty.dtype == dtype and penalty.item() == pytest.approx(math.sqrt(4.5), rel=rel)
