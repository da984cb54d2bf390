import io

import pytest
import torch

from lrlab.adapters import allora, peft_glue, svfit
from lrlab.errors import ConfigError
from lrlab.models.classifier import mlp

TARGETS = ["body.1", "body.3"]  # Linear(16, 32) and Linear(32, 32)
HEAD = 32 * 3 + 3


def tiny():
    torch.manual_seed(0)
    return mlp(16, 3, hidden=(32, 32))


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
def test_peft_trainable_counts(name, expected):
    model = getattr(peft_glue, name)(tiny(), TARGETS, r=4, train_also=("head",))
    assert trainable(model) == expected + HEAD


def test_adalora_counts_hooks_and_penalty():
    model = peft_glue.adalora(tiny(), TARGETS, total_steps=20, init_r=6, target_r=2, train_also=("head",))
    assert trainable(model) == (6 * 16 + 32 * 6 + 6) + (6 * 32 + 32 * 6 + 6) + HEAD
    penalty = model.lrlab_penalty(None, None, None)
    assert penalty.item() > 0 and penalty.requires_grad
    x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(20):
        loss = torch.nn.functional.cross_entropy(logits(model, x), y) + model.lrlab_penalty(None, None, None)
        loss.backward()
        opt.step()
        model.lrlab_hooks[0](None, step)
        opt.zero_grad()
    kept = sum(int((p != 0).sum()) for n, p in model.named_parameters() if "lora_E" in n)
    assert kept == 2 * 2  # the rank budget (target_r per layer) is reached by the schedule's end


def test_pissa_starts_at_the_pretrained_function():
    base = tiny()
    x = torch.randn(5, 16)
    expected = logits(base, x)
    model = peft_glue.pissa(tiny(), TARGETS, r=4)
    assert torch.allclose(logits(model, x), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["lora", "dora", "pissa", "miss"])
def test_peft_merge_equivalence(name):
    model = getattr(peft_glue, name)(tiny(), TARGETS, r=4)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(5, 16)
    before = logits(model, x)
    merged = peft_glue.merge(model)
    assert not any("lora" in n or "miss" in n for n, _ in merged.named_parameters())
    assert torch.allclose(logits(merged, x), before, atol=1e-5)


def test_peft_save_load_round_trip():
    model = peft_glue.lora(tiny(), TARGETS, r=4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = peft_glue.lora(mlp(16, 3, hidden=(32, 32)), TARGETS, r=4)
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


def test_allora_scales_gradients_and_has_no_alpha():
    model = allora.apply(tiny(), TARGETS, r=4, eta=3.0, train_also=("head",))
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


def test_allora_merge_equivalence():
    model = allora.apply(tiny(), TARGETS, r=4)
    with torch.no_grad():
        for m in (model.body[1], model.body[3]):
            m.lora_B.copy_(torch.randn_like(m.lora_B))
    x = torch.randn(5, 16)
    before = logits(model, x)
    assert torch.allclose(logits(allora.merge(model), x), before, atol=1e-5)


def test_svfit_trains_only_top_singular_values():
    model = svfit.apply(tiny(), TARGETS, spectrum=0.99, train_also=())
    ranks = [model.body[i].singular_values.numel() for i in (1, 3)]
    assert trainable(model) == sum(ranks)
    for i, layer in ((1, model.body[1]), (3, model.body[3])):
        s = torch.linalg.svdvals(tiny().body[i].weight.detach())
        share = s.cumsum(0) / s.sum()
        assert share[ranks[(i - 1) // 2] - 1] >= 0.99 and (ranks[(i - 1) // 2] == 1 or share[ranks[(i - 1) // 2] - 2] < 0.99)
    x = torch.randn(5, 16)
    assert torch.allclose(logits(model, x), logits(tiny(), x), atol=1e-5)


def test_bad_input_is_a_config_error():
    with pytest.raises(ConfigError):
        peft_glue.lora(tiny(), TARGETS, r=0)
    with pytest.raises(ConfigError):
        allora.apply(tiny(), ["nope"])
    with pytest.raises(ConfigError):
        svfit.apply(tiny(), TARGETS, spectrum=1.5)
