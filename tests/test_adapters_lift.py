import pytest
import torch

from lrlab.adapters import lift
from lrlab.errors import ConfigError


def test_principal_mask_on_a_hand_made_matrix():
    # rank-1 matrix: its rank-1 approximation is itself, so the mask is its largest |entries|
    weight = torch.outer(torch.tensor([1.0, -3.0]), torch.tensor([2.0, 0.5, -1.0]))
    index = lift.principal_mask(weight, filter_rank=1, budget=2)
    assert index.tolist() == [3, 5]  # -6 and 3 (flattened positions)


def test_magnitude_mask_takes_the_largest_entries_of_w_itself():
    # |W| = [[3, 0.5], [2, 2.5]] while its rank-1 approximation ranks the entries differently
    weight = torch.tensor([[3.0, -0.5], [-2.0, 2.5]])
    assert lift.magnitude_mask(weight, filter_rank=1, budget=2).tolist() == [0, 3]
    assert lift.principal_mask(weight, filter_rank=1, budget=2).tolist() != [0, 3]


ADAMW = {"_target_": "lrlab.optim.adamw.build", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}


def test_magnitude_selection_moves_only_the_largest_weights(method, tiny):
    adapter = method("adapter", "lift", target_modules=["body.1"], lora_rank=2, select="magnitude", refresh_every=1000)
    model = adapter.transform_model(tiny())
    weight = model.body[1].weight
    before = weight.detach().clone()
    opt = adapter.build_optimizer(model, ADAMW)
    torch.nn.functional.cross_entropy(model(torch.randn(8, 16))["logits"], torch.randint(0, 3, (8,))).backward()
    opt.step()
    largest = torch.topk(before.abs().flatten(), (32 + 16) * 2).indices
    changed = (weight.detach() != before).flatten().nonzero().squeeze(1)
    assert set(changed.tolist()) <= set(largest.tolist()) and changed.numel() > 0


@pytest.fixture
def lifted(method, tiny):
    """(adapter, model, optimizer builder) for LIFT on body.1 with a rank-2 budget."""
    def make(refresh_every=1000, **adamw):
        adapter = method("adapter", "lift", target_modules=["body.1"], lora_rank=2, filter_rank=4,
                         refresh_every=refresh_every)
        model = adapter.transform_model(tiny())
        return adapter, model, adapter.build_optimizer(model, {**ADAMW, **adamw})

    return make


def test_only_masked_entries_move_and_moments_are_sparse(lifted, make_task):
    adapter, model, opt = lifted()
    before = model.body[1].weight.detach().clone()
    x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
    for _ in range(3):
        torch.nn.functional.cross_entropy(model(x)["logits"], y).backward()
        opt.step()
        opt.zero_grad()
    state = opt.state[model.body[1].weight]
    budget = (32 + 16) * 2
    assert state["exp_avg"].numel() == budget and state["exp_avg_sq"].numel() == budget
    changed = (model.body[1].weight.detach() != before).flatten().nonzero().squeeze(1)
    assert set(changed.tolist()) <= set(state["index"].tolist()) and changed.numel() > budget // 2
    assert opt.state[model.head.weight]["exp_avg"].numel() == model.head.weight.numel()
    assert make_task(model, [adapter]).trainable_params() == budget + 32 * 3 + 3  # K entries of body.1, the whole head
    assert not model.body[3].weight.requires_grad


def test_refresh_keeps_moments_of_surviving_entries(lifted):
    _, model, opt = lifted(refresh_every=2, lr=1e-1)  # refreshes at steps 1 and 3
    x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
    weight = model.body[1].weight
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(x)["logits"], y).backward()
        opt.step()
        opt.zero_grad()
    old = {k: v.clone() for k, v in opt.state[weight].items() if torch.is_tensor(v)}
    torch.nn.functional.cross_entropy(model(x)["logits"], y).backward()
    grad = weight.grad.flatten().clone()
    opt.step()
    new = opt.state[weight]
    kept = torch.isin(new["index"], old["index"])
    assert kept.any() and new["exp_avg"].numel() == old["exp_avg"].numel()
    carried = old["exp_avg"][torch.searchsorted(old["index"], new["index"][kept])]
    expected = 0.9 * carried + 0.1 * grad[new["index"][kept]]
    assert torch.allclose(new["exp_avg"][kept], expected, atol=1e-7)
    fresh = new["index"][~kept]
    assert torch.allclose(new["exp_avg"][~kept], 0.1 * grad[fresh], atol=1e-7)


def test_lift_refuses_another_optimizer_and_a_bad_select(method, tiny):
    adapter = method("adapter", "lift", target_modules=["body.1"])
    model = adapter.transform_model(tiny())
    with pytest.raises(ConfigError, match="optimizer=adamw"):
        adapter.build_optimizer(model, {"_target_": "lrlab.optim.lowrank_adam.build", "lr": 0.01})
    with pytest.raises(ConfigError) as refused:
        method("adapter", "lift", select="random")
    assert refused.value.key == "adapter.select"


def test_a_checkpointed_optimizer_keeps_its_integer_indices(lifted):
    import io

    _, model, opt = lifted(refresh_every=2)
    x, y = torch.randn(8, 16), torch.randint(0, 3, (8,))
    torch.nn.functional.cross_entropy(model(x)["logits"], y).backward()
    opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    _, _, fresh = lifted(refresh_every=2)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    index = fresh.state[fresh.param_groups[0]["params"][0]]["index"]
    assert index.dtype == torch.int64 and torch.equal(index, opt.state[opt.param_groups[0]["params"][0]]["index"])
