"""Adapters on the tiny MLP: counts, the pre-trained function at the start, merges, the ALLoRA
coefficient, SVFit's spectrum, default targets, bad input."""

import io

import pytest
import torch

from conftest import TARGETS
from lrlab.adapters import allora
from lrlab.adapters.base import default_targets
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


def test_allora_scales_gradients_and_has_no_alpha(method, tiny):
    model = method("adapter", "allora", target_modules=TARGETS, r=4, eta=3.0).transform_model(tiny())
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
    coeff = allora.row_coefficient(layer.lora_B, 3.0, 1)
    assert torch.allclose(layer.lora_B.grad, unscaled * coeff, atol=1e-6)


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
])
def test_bad_input_is_a_config_error(method, tiny, name, settings, key):
    with pytest.raises(ConfigError, match=key):
        method("adapter", name, **{"target_modules": TARGETS, **settings}).transform_model(tiny())
