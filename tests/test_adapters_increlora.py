import io
import math

import pytest
import torch

from conftest import TARGETS
from lrlab.errors import ConfigError

HEAD = 32 * 3 + 3
EARLIER = dict(warmup=0, advance_learning=False, scale="target_rank", ranks_per_growth=1)  # the earlier rules
OFFICIAL = dict(warmup=0, advance_learning=True, scale="current_rank")


@pytest.fixture
def adapted(method, tiny, make_task):
    """adapted(**settings) -> (the IncreLoRA method, the adapted tiny MLP, a task holding both)."""
    def make(**settings):
        options = dict(target_modules=TARGETS, init_r=1, target_r=2, max_r=3, interval=2, top_h=1, **EARLIER) | settings
        adapter = method("adapter", "increlora", **options)
        model = adapter.transform_model(tiny())
        return adapter, model, make_task(model, [adapter])

    return make


def layers(model):
    return model.body[1], model.body[3]


def test_starts_at_the_pretrained_function_and_counts_active_ranks(adapted, tiny):
    _, model, task = adapted()
    x = torch.randn(5, 16)
    assert torch.allclose(model(x)["logits"], tiny()(x)["logits"])
    assert task.trainable_params() == (16 + 32 + 1) + (32 + 32 + 1) + HEAD
    preallocated = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert preallocated == 3 * (16 + 32 + 1) + 3 * (32 + 32 + 1) + HEAD


def test_score_is_the_update_times_its_gradient(adapted):
    layer = layers(adapted(init_r=2)[1])[0]
    with torch.no_grad():
        layer.lora_E.copy_(torch.tensor([0.5, -2.0, 3.0]))  # the third rank is inactive
    x, c = torch.randn(4, 16), torch.randn(4, 32)
    (layer(x) * c).sum().backward()
    delta = 16.0 / 2 * (layer.lora_B[:, :2] * torch.tensor([0.5, -2.0])) @ layer.lora_A[:2]
    expected = (delta * (c.T @ x)).abs().sum() / math.sqrt(32 * 16)  # dL/d(dW) = c^T x
    assert torch.allclose(layer.score, expected.detach())
    assert layer.lora_E.grad[2] == 0 and layer.lora_A.grad[2].abs().sum() == 0


def test_importance_is_the_smoothed_sensitivity_times_uncertainty(adapted):
    layer = layers(adapted()[1])[0]
    layer.score = torch.tensor(2.0)
    layer.update_importance(0.85, 0.85)
    sensitivity, uncertainty = 0.15 * 2.0, 0.15 * abs(2.0 - 0.15 * 2.0)
    assert math.isclose(layer.importance(), sensitivity * uncertainty, rel_tol=1e-6)


def test_ranks_grow_on_schedule_to_the_target_average_within_max_r(adapted):
    adapter, model, task = adapted(max_r=2)
    first, second = layers(model)
    x = torch.randn(5, 16)
    before = model(x)["logits"]
    ranks = []
    for step in range(1, 8):
        first.score, second.score = torch.tensor(0.0), torch.tensor(float(step % 3))  # only the second matters
        adapter.after_step(task, step)
        ranks.append((first.rank, second.rank))
    # step 2: the more important module grows; step 4: it is at max_r, so the other one; then the target (2 x 2) holds
    assert ranks == [(1, 1), (1, 2), (1, 2), (2, 2), (2, 2), (2, 2), (2, 2)]
    assert torch.allclose(model(x)["logits"], before)  # new ranks start at lambda = 0
    assert task.trainable_params() == 2 * (16 + 32 + 1) + 2 * (32 + 32 + 1) + HEAD


def train(adapted, steps=3):
    adapter, model, task = adapted
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    x, y = torch.randn(16, 16), torch.randint(0, 3, (16,))
    for step in range(1, steps + 1):
        loss = torch.nn.functional.cross_entropy(model(x)["logits"], y) + adapter.loss_term(task, None, None)
        loss.backward()
        opt.step()
        opt.zero_grad()
        adapter.after_step(task, step)
    return model


def test_inactive_ranks_do_not_move_and_the_penalty_is_orthogonality(adapted):
    adapter, model, task = adapted(interval=100)
    first = layers(model)[0]
    reserve = first.lora_A[1:].detach().clone(), first.lora_B[:, 1:].detach().clone()
    train((adapter, model, task))
    assert torch.equal(first.lora_A[1:], reserve[0]) and torch.equal(first.lora_B[:, 1:], reserve[1])
    assert torch.count_nonzero(first.lora_E[1:]) == 0 and first.lora_E[0] != 0
    q, p = first.lora_A[:1], first.lora_B[:, :1]
    expected = torch.linalg.norm(q @ q.T - 1) + torch.linalg.norm(p.T @ p - 1)
    assert torch.allclose(first.orthogonality(), expected)
    both = expected + layers(model)[1].orthogonality()
    assert torch.allclose(adapter.loss_term(task, None, None), 0.1 * both / 4)  # weight 0.1, mean over 2 x 2 factors


def test_save_load_and_merge(adapted):
    adapter, model, task = adapted()
    train((adapter, model, task), steps=4)
    assert sum(layer.rank for layer in layers(model)) == 4
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = adapted()[1]
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(5, 16)
    before = model(x)["logits"]
    assert [layer.rank for layer in layers(fresh)] == [layer.rank for layer in layers(model)]
    assert torch.equal(fresh(x)["logits"], before)
    merged = adapter.export(model)
    assert all(type(layer) is torch.nn.Linear for layer in layers(merged))
    assert torch.allclose(merged(x)["logits"], before, atol=1e-5)


def test_official_scale_is_alpha_over_the_current_rank(adapted):
    layer = layers(adapted(**OFFICIAL, alpha=6.0, init_r=2, max_r=3)[1])[0]
    with torch.no_grad():
        layer.lora_E.copy_(torch.tensor([0.5, -2.0, 3.0]))
    by_hand = 6.0 / (2 + 1e-5) * (layer.lora_B[:, :2] * torch.tensor([0.5, -2.0])) @ layer.lora_A[:2]
    reserve = 6.0 / (2 + 1e-5) * 1e-5 * torch.outer(layer.lora_B[:, 2], layer.lora_A[2])  # lambda fixed at 1e-5
    expected = by_hand + reserve  # float32 rounding: a few 1e-7 relative; r - 1e-5 for r + 1e-5 would move it by 1e-5
    assert torch.linalg.norm(layer.delta() - expected) <= 1e-6 * torch.linalg.norm(expected)


def test_advance_learning_trains_the_reserve_rank_before_it_is_activated(adapted):
    adapter, model, task = adapted(**OFFICIAL, target_r=3, max_r=4, interval=3, ranks_per_growth=1)
    first, second = layers(model)
    assert first.reserve.tolist() == [False, True, False, False]
    assert task.trainable_params() == 2 * (16 + 32) + 1 + 2 * (32 + 32) + 1 + HEAD  # active ranks + reserve rows
    x, c = torch.randn(4, 16), torch.randn(4, 32)
    (first(x) * c).sum().backward()
    grad_w = c.T @ x  # dL/dW
    scale = 16.0 / (1 + 1e-5)
    # dL/dq_1 = scale * lambda_1 * p_1^T dL/dW with the reserve's fixed lambda_1 = 1e-5
    assert torch.allclose(first.lora_A.grad[1], scale * 1e-5 * first.lora_B[:, 1].detach() @ grad_w, rtol=1e-4)
    assert first.lora_A.grad[2:].abs().sum() == 0 and first.lora_E.grad[1:].abs().sum() == 0
    first.score, second.score = torch.tensor(1.0), torch.tensor(0.0)
    adapter.after_step(task, 3)  # the first module grows: its reserve becomes active at lambda = 1e-5
    assert first.active.tolist() == [True, True, False, False] and first.reserve.tolist() == [False, False, True, False]
    assert first.lora_E[1].item() == pytest.approx(1e-5) and second.rank == 1


def test_growth_adds_ranks_per_growth_within_the_budget_then_drops_the_reserve(adapted):
    adapter, model, task = adapted(**OFFICIAL, target_r=3, max_r=4, top_h=2, ranks_per_growth=2)
    first, second = layers(model)
    x = torch.randn(5, 16)
    first.score, second.score = torch.tensor(2.0), torch.tensor(1.0)
    adapter.after_step(task, 2)  # budget 2 x 3 = 6 from 2: the first gets 2 ranks, the second the last 2
    assert (first.rank, second.rank) == (3, 3)
    assert not first.reserve.any() and not second.reserve.any()  # budget met: reserve lambda back to 0
    merged = adapter.export(model)
    assert torch.allclose(merged(x)["logits"], model(x)["logits"], atol=1e-5)


def test_official_defaults(method):
    adapter = method("adapter", "increlora")
    assert (adapter.warmup, adapter.interval, adapter.alpha, adapter.ranks_per_growth) == (1000, 1000, 16.0, 4)
    assert adapter.advance_learning and adapter.scale == "current_rank" and adapter.top_h == 6


@pytest.mark.parametrize("settings, key", [({"init_r": 3}, "adapter.init_r"), ({"max_r": 1}, "adapter.max_r"),
                                           ({"interval": 0}, "adapter.interval"), ({"max_r": 17}, "adapter.max_r"),
                                           ({"scale": "rank"}, "adapter.scale"),
                                           ({"ranks_per_growth": 0}, "adapter.ranks_per_growth")])
def test_bad_input_is_a_config_error(adapted, settings, key):
    with pytest.raises(ConfigError, match=key):
        adapted(**settings)
