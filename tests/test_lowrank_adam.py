"""LowRankAdamW and the projector: bases, state, checkpoints, options, bad input."""

import io
import math

import pytest
import torch
from torch import nn

from lrlab.errors import ConfigError
from lrlab.optim import adamw, lowrank_adam, projector
from lrlab.optim.routing import state_bytes


def dct_reference(n: int) -> torch.Tensor:
    """DCT-II written out element by element, independent of projector.dct_matrix."""
    d = torch.empty(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            d[i, j] = math.sqrt(2 / n) * math.cos(math.pi * i * (2 * j + 1) / (2 * n)) * (math.sqrt(0.5) if i == 0 else 1)
    return d.float()


def test_dct_matrix_is_orthonormal_dct2():
    d = projector.dct_matrix(12, torch.device("cpu"))
    assert torch.allclose(d, dct_reference(12), atol=1e-6)
    assert torch.allclose(d @ d.T, torch.eye(12), atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 7, 12, 64])
@pytest.mark.parametrize("dim", [0, 1])
def test_fft_dct_scores_equal_the_matrix(n, dim, monkeypatch):
    monkeypatch.setattr(projector, "DCT_BLOCK", 3 * n)  # several blocks, the last one short
    x = torch.randn(n, 11) if dim == 0 else torch.randn(11, n)
    expected = (dct_reference(n) @ x).abs().sum(1) if dim == 0 else (x @ dct_reference(n).T).abs().sum(0)
    assert torch.allclose(projector.dct_l1_scores(x, dim), expected, atol=1e-5)


@pytest.mark.parametrize("shape", [(30, 12), (12, 30)])
def test_dct_selects_top_l1_columns(shape):
    torch.manual_seed(0)
    grad, rank = torch.randn(*shape), 4
    side = projector.resolve_side(grad.shape, "std")
    basis = projector.refresh(grad, rank, "std", "dct")
    d = dct_reference(min(shape))
    if side == "right":  # S = G·Dᵀ: the DCT-II of each row
        scores = (grad @ d.T).abs().sum(0)
        expected_low = (grad @ d.T)[:, scores.topk(rank).indices]
    else:  # S = D·G: the DCT-II of each column
        scores = (d @ grad).abs().sum(1)
        expected_low = (d @ grad)[scores.topk(rank).indices]
    assert list(basis) == [f"proj_{side}_idx"] and basis[f"proj_{side}_idx"].dtype == torch.int64
    left, right = projector.matrices(basis, grad.shape)
    assert torch.allclose(projector.project(grad, left, right), expected_low, atol=1e-5)


@pytest.mark.parametrize("basis", ["eigh", "randomized"])
@pytest.mark.parametrize("shape", [(64, 24), (24, 64)])
def test_cheap_bases_span_the_svd_subspace(basis, shape):
    torch.manual_seed(0)
    low_rank = torch.randn(shape[0], 5) @ torch.randn(5, shape[1])
    grad = low_rank + 1e-3 * torch.randn(*shape)
    rank = 5

    def projection_matrix(b):
        left, right = projector.matrices(projector.refresh(grad, rank, "std", b), grad.shape)
        return left @ left.T if left is not None else right.T @ right

    assert torch.allclose(projection_matrix(basis), projection_matrix("svd"), atol=1e-4)


def test_random_basis_is_orthonormal_and_seeded():
    grad = torch.randn(40, 16)
    a = projector.refresh(grad, 4, "std", "random", seed=3)["proj_right"]
    b = projector.refresh(grad, 4, "std", "random", seed=3)["proj_right"]
    assert torch.equal(a, b) and torch.allclose(a @ a.T, torch.eye(4), atol=1e-5)


def test_full_side_projects_both():
    grad = torch.randn(20, 16)
    left, right = projector.matrices(projector.refresh(grad, 3, "full", "svd"), grad.shape)
    assert projector.project(grad, left, right).shape == (3, 3)


class TwoLayer(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.attn = nn.Linear(16, 24, dtype=dtype)
        self.mlp = nn.Linear(24, 16, dtype=dtype)
        self.norm = nn.LayerNorm(16)


def train(opt, model, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()


def test_build_routes_attention_and_mlp_only():
    model = TwoLayer()
    opt = lowrank_adam.build(model, rank=4, update_proj_gap=2)
    projected = opt.param_groups[0]["params"]
    assert {id(p) for p in projected} == {id(model.attn.weight), id(model.mlp.weight)}
    assert all("rank" not in g for g in opt.param_groups[1:])


def test_adamw_matrix_lr_scale_matches_galore_routing():
    """The full-rank control: the matrices GaLore projects train at lr × scale, the rest at lr."""
    model = TwoLayer()
    opt = adamw.build(model, lr=0.01, matrix_lr_scale=0.25)
    galore = lowrank_adam.build(model, rank=4)
    lr_by_param = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    projected = {id(p) for p in galore.param_groups[0]["params"]}
    assert len(lr_by_param) == len(list(model.parameters()))
    assert all(lr == (0.0025 if pid in projected else 0.01) for pid, lr in lr_by_param.items())
    assert [len(g["params"]) for g in adamw.build(model, lr=0.01).param_groups] == [3, 4]


@pytest.mark.parametrize("basis", ["svd", "dct"])
def test_state_bytes_match_formula(basis):
    model = TwoLayer()
    opt = lowrank_adam.build(model, rank=4, update_proj_gap=2, basis=basis)
    train(opt, model, 1)
    total, by_group = state_bytes(opt)
    expected = sum(projector.state_bytes_formula(p.shape, 4, "std", basis) for p in opt.param_groups[0]["params"])
    assert by_group[0] == expected
    dense = sum(2 * p.numel() * 4 for g in opt.param_groups[1:] for p in g["params"])
    assert total == expected + dense


def test_state_is_tensors_and_ints_and_loads_weights_only():
    model = TwoLayer()
    opt = lowrank_adam.build(model, rank=4, update_proj_gap=2, residual="fira")
    train(opt, model, 3)
    for state in opt.state.values():
        assert all(torch.is_tensor(v) or isinstance(v, int) for v in state.values())
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)
    assert restored["state"]


def test_resume_equals_straight():
    """N steps + save/load + N steps == 2N steps, with the projector refreshed across the boundary."""
    torch.manual_seed(0)
    straight_model = TwoLayer()
    resumed_model = TwoLayer()
    resumed_model.load_state_dict(straight_model.state_dict())
    straight = lowrank_adam.build(straight_model, rank=4, update_proj_gap=3, residual="fira")
    train(straight, straight_model, 8, seed=1)
    first = lowrank_adam.build(resumed_model, rank=4, update_proj_gap=3, residual="fira")
    gen_steps = 4
    train(first, resumed_model, gen_steps, seed=1)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = lowrank_adam.build(resumed_model, rank=4, update_proj_gap=3, residual="fira")
    second.load_state_dict(torch.load(buffer, weights_only=True))
    gen = torch.Generator().manual_seed(1)
    for _ in range(gen_steps):  # replay the generator to the same position
        for p in resumed_model.parameters():
            torch.randn(p.shape, generator=gen)
    for _ in range(gen_steps):
        for p in resumed_model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        second.step()
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


def test_bf16_params_keep_fp32_bases_after_load():
    model = TwoLayer(dtype=torch.bfloat16)
    opt = lowrank_adam.build(model, rank=4, update_proj_gap=2)
    train(opt, model, 2)
    again = lowrank_adam.build(model, rank=4, update_proj_gap=2)
    again.load_state_dict(opt.state_dict())
    for p in again.param_groups[0]["params"]:
        state = again.state[p]
        assert p.dtype == torch.bfloat16
        assert all(state[k].dtype == torch.float32 for k in ("exp_avg", "exp_avg_sq") if k in state)
        assert any(k in state and state[k].dtype == torch.float32 for k in ("proj_left", "proj_right"))


def test_reset_clears_moments_and_restarts_bias_correction():
    model = TwoLayer()
    opt = lowrank_adam.build(model, rank=4, update_proj_gap=2, on_refresh="reset", rewarm_steps=10)
    train(opt, model, 2)
    p = opt.param_groups[0]["params"][0]
    assert opt.state[p]["adam_step"] == 2
    train(opt, model, 1)  # step index 2 refreshes: moments restart
    assert opt.state[p]["adam_step"] == 1
    assert lowrank_adam._rewarm(opt.state[p], opt.param_groups[0]) == pytest.approx(1e-3 + (1 - 1e-3) * 0.2)


def test_rotate_maps_moments_into_new_basis():
    model = TwoLayer()
    opt = lowrank_adam.build(model, rank=4, update_proj_gap=2, on_refresh="rotate")
    train(opt, model, 2)
    p = opt.param_groups[0]["params"][0]
    state = opt.state[p]
    old = {k: state[k].clone() for k in ("proj_left", "proj_right") if k in state}
    m_old = state["exp_avg"].clone()
    grad = torch.randn(p.shape)
    new = projector.refresh(grad, 4, "std", "svd")
    to_left, to_right = projector.rotation(old, new, p.shape)
    lowrank_adam._rotate_moments(state, new, p.shape)
    expected = to_left @ m_old if to_left is not None else m_old @ to_right
    assert torch.allclose(state["exp_avg"], expected)
    assert (state["exp_avg_sq"] >= 0).all()


def test_frugal_moves_the_residual_by_sign():
    torch.manual_seed(0)
    p = nn.Parameter(torch.zeros(12, 6))
    opt = lowrank_adam.LowRankAdamW([{"params": [p], "rank": 2, "update_proj_gap": 5, "scale": 1.0,
                                      "residual": "frugal", "residual_lr_scale": 0.5}], lr=0.1)
    p.grad = torch.randn(12, 6)
    opt.step()
    state = opt.state[p]
    left, right = projector.matrices(state, p.shape)
    dropped = p.grad - projector.project_back(projector.project(p.grad, left, right), left, right)
    kept_update = -0.1 * projector.project_back(torch.sign(projector.project(p.grad, left, right)), left, right)
    # first Adam step: N = R/(|R|+eps) = sign(R); bias-corrected step = lr
    assert torch.allclose(p.data, kept_update - 0.05 * dropped.sign(), atol=1e-4)


@pytest.mark.parametrize("kwargs, key", [
    ({"rank": 0}, "optimizer.rank"), ({"rank": -2}, "optimizer.rank"), ({"rank": 100}, "optimizer.rank"),
    ({"update_proj_gap": 0}, "optimizer.update_proj_gap"), ({"basis": "qr"}, "optimizer.basis"),
    ({"proj_type": "middle"}, "optimizer.proj_type"), ({"residual": "x"}, "optimizer.residual"),
    ({"on_refresh": "x"}, "optimizer.on_refresh"), ({"lr": -1.0}, "optimizer.lr"),
    ({"target_modules": ["nothing"]}, "optimizer.target_modules"),
])
def test_bad_input_names_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        lowrank_adam.build(TwoLayer(), **{"rank": 4, **kwargs})


def test_closure_is_called():
    model = TwoLayer()
    opt = lowrank_adam.build(model, rank=4)
    calls = []

    def closure():
        calls.append(1)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        return torch.tensor(1.0)

    assert opt.step(closure) == 1.0 and calls == [1]
