"""LowRankAdamW and the projector: bases, state, checkpoints, options, bad input."""

import io
import math
import re

import pytest
import torch
from torch import nn

from lrlab.errors import ConfigError
from lrlab.optim import adamw, frugal, lowrank_adam, projector, sgd
from lrlab.optim.state import state_bytes
from conftest import TwoLayer


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


@pytest.mark.parametrize("n", [1, 2, 7, 12, 64, 65])
@pytest.mark.parametrize("dim", [0, 1])
def test_fft_dct_scores_equal_the_matrix(n, dim, monkeypatch):
    monkeypatch.setattr(projector, "DCT_BLOCK", 3 * n)  # several blocks, the last one short
    x = torch.randn(n, 11) if dim == 0 else torch.randn(11, n)
    expected = (dct_reference(n) @ x).abs().sum(1) if dim == 0 else (x @ dct_reference(n).T).abs().sum(0)
    assert torch.allclose(projector.dct_l1_scores(x, dim), expected, atol=1e-5)


@pytest.mark.parametrize("n", [1, 2, 7, 12, 64, 65])
@pytest.mark.parametrize("dim", [0, 1])
def test_fft_dct3_scores_equal_the_transposed_matrix(n, dim, monkeypatch):
    monkeypatch.setattr(projector, "DCT_BLOCK", 3 * n)
    x = torch.randn(n, 11) if dim == 0 else torch.randn(11, n)
    expected = (dct_reference(n).T @ x).abs().sum(1) if dim == 0 else (x @ dct_reference(n)).abs().sum(0)
    assert torch.allclose(projector.dct3_l1_scores(x, dim), expected, atol=1e-5)


@pytest.mark.parametrize("variant", ["matmul", "makhoul"])
@pytest.mark.parametrize("shape", [(30, 12), (12, 30), (12, 12)], ids=["m>n", "m<n", "m=n"])
def test_dct_selects_top_l1_basis_vectors(shape, variant):
    """`matmul` (official default): columns of D, S = G·D (right) or Dᵀ·G (left); `makhoul`: rows
    of D, S = G·Dᵀ or D·G. The low-rank gradient is S at the r best-scored basis vectors."""
    torch.manual_seed(0)
    grad, rank = torch.randn(*shape), 4
    side = projector.resolve_side(grad.shape, "std")
    basis = projector.refresh(grad, rank, "std", "dct", dct_variant=variant)
    d = dct_reference(min(shape))
    vectors = d.T if variant == "matmul" else d  # one basis vector per row
    if side == "right":
        scores = (grad @ vectors.T).abs().sum(0)
        expected_low = (grad @ vectors.T)[:, scores.topk(rank).indices]
    else:
        scores = (vectors @ grad).abs().sum(1)
        expected_low = (vectors @ grad)[scores.topk(rank).indices]
    assert list(basis) == [f"proj_{side}_idx"] and basis[f"proj_{side}_idx"].dtype == torch.int64
    left, right = projector.matrices(basis, grad.shape, variant)
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


# m = n: `std` projects from the right (galore-torch: m ≥ n), `reverse_std` from the left.
SQUARE_SIDE = {"std": "right", "reverse_std": "left", "left": "left", "right": "right", "full": "full"}


@pytest.mark.parametrize("proj_type", SQUARE_SIDE)
def test_square_weight_on_every_side(proj_type):
    """A square 8×8 weight, rank 3, one step from zero: with G = U·S·Vh (an SVD computed here),
    P = U[:, :3], Q = Vh[:3], R = Pᵀ·G, G·Qᵀ or Pᵀ·G·Qᵀ by side, and the first Adam step moves W by
    −lr·back(R/(|R| + ε/√(1−β2))). The state holds the side's basis and the analytic byte count.
    ε = 0.01: on the `full` side R = Pᵀ·G·Qᵀ is diag(S) plus float round-off (~1e-7) off the
    diagonal, which a tiny ε would normalise to noise of O(1e-2)."""
    assert set(SQUARE_SIDE) == set(projector.SIDES)
    side, lr, eps = SQUARE_SIDE[proj_type], 0.1, 1e-2
    p = nn.Parameter(torch.zeros(8, 8))
    opt = lowrank_adam.LowRankAdamW([{"params": [p], "rank": 3, "update_proj_gap": 5, "proj_type": proj_type}],
                                    lr=lr, eps=eps)
    p.grad = torch.randn(8, 8, generator=torch.Generator().manual_seed(4))
    opt.step()
    u, _, vh = torch.linalg.svd(p.grad)
    left = u[:, :3] if side in ("left", "full") else None
    right = vh[:3] if side in ("right", "full") else None
    low = p.grad if left is None else left.T @ p.grad
    low = low if right is None else low @ right.T
    normalised = low / (low.abs() + eps / math.sqrt(1 - 0.999))
    back = normalised if left is None else left @ normalised
    back = back if right is None else back @ right
    state = opt.state[p]
    assert {k for k in projector.STATE_KEYS if k in state} == {f"proj_{s}" for s in ("left", "right")
                                                               if side in (s, "full")}
    assert state["exp_avg"].shape == low.shape
    assert torch.allclose(p.detach(), -lr * back, atol=1e-6)
    assert state_bytes(opt)[0] == projector.state_bytes_formula(p.shape, 3, proj_type, "svd")


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


def test_bf16_dense_parameters_keep_fp32_moments():
    """v changes by (1−β2)·g² per step, below bf16's resolution next to v: the moments are fp32.
    After one step from zero: m = (1−β1)·g and v = (1−β2)·g², exactly in fp32."""
    model = TwoLayer().to(torch.bfloat16)
    opt = lowrank_adam.build(model, rank=4, update_proj_gap=2)
    train(opt, model, 1)
    gen = torch.Generator().manual_seed(0)
    grads = {p: torch.randn(p.shape, generator=gen).to(torch.bfloat16) for p in model.parameters()}
    for group in opt.param_groups[1:]:
        for p in group["params"]:
            state, g = opt.state[p], grads[p].float()
            assert p.dtype == torch.bfloat16 and state["exp_avg"].dtype == torch.float32
            assert torch.allclose(state["exp_avg"], g * (1 - 0.9), rtol=1e-6, atol=0)  # bf16 would be off by ~4e-3
            assert torch.allclose(state["exp_avg_sq"], g * g * (1 - 0.999), rtol=1e-6, atol=0)


def _projected_state(opt):
    p = opt.param_groups[0]["params"][0]
    return p, opt.state[p]


@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (12, 12)], ids=["m<n", "m>n", "m=n"])
@pytest.mark.parametrize("on_refresh", ["reset_all", "reset_projected"])
def test_reset_zeroes_the_moments_then_takes_one_step(shape, on_refresh):
    """After a reset the moments hold one step of the new projected gradient R = Pᵀ·G (or G·Qᵀ):
    m = (1−β1)·R, v = (1−β2)·R², and bias correction restarts (adam_step 1)."""
    p = nn.Parameter(torch.randn(*shape))
    opt = lowrank_adam.LowRankAdamW([{"params": [p], "rank": 3, "update_proj_gap": 2, "on_refresh": on_refresh}])
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        p.grad = torch.randn(*shape, generator=gen)
        opt.step()
    p.grad = torch.randn(*shape, generator=gen)
    opt.step()  # step index 2: refresh + reset
    state = opt.state[p]
    left, right = state.get("proj_left"), state.get("proj_right")
    low = left.T @ p.grad if left is not None else p.grad @ right.T
    assert state["adam_step"] == 1
    assert torch.allclose(state["exp_avg"], 0.1 * low, atol=1e-6)
    assert torch.allclose(state["exp_avg_sq"], 0.001 * low * low, atol=1e-6)


def test_reset_all_restarts_every_group_with_the_lr_at_one_thousandth():
    """Momentum reset (arXiv 2505.22922): at a refresh the dense groups restart too; the first step
    after the reset runs at 0.001·lr, so a dense weight moves by 0.001·lr·g/(|g| + ε/√(1−β2))."""
    model = TwoLayer()
    opt = lowrank_adam.build(model, lr=0.1, rank=4, update_proj_gap=3, on_refresh="reset_all", rewarm_steps=10)
    train(opt, model, 3)
    with torch.no_grad():
        model.norm.weight.zero_()
    g = torch.randn(16)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    model.norm.weight.grad = g
    opt.step()
    state = opt.state[model.norm.weight]
    assert state["adam_step"] == 1 and torch.allclose(state["exp_avg"], g * (1 - 0.9), rtol=1e-6, atol=0)
    expected = -0.1 * 1e-3 * g / (g.abs() + 1e-6 / math.sqrt(1 - 0.999))
    assert torch.allclose(model.norm.weight.detach(), expected, rtol=1e-5, atol=0)
    assert all(opt.state[p]["adam_step"] == 1 for group in opt.param_groups for p in group["params"])


def test_reset_projected_leaves_the_dense_groups_alone():
    model = TwoLayer()
    opt = lowrank_adam.build(model, rank=4, update_proj_gap=3, on_refresh="reset_projected")
    train(opt, model, 4)
    assert [opt.state[p]["adam_step"] for p in opt.param_groups[0]["params"]] == [1, 1]
    assert all(opt.state[p]["adam_step"] == 4 for group in opt.param_groups[1:] for p in group["params"])


@pytest.mark.parametrize("k, expected", [(0, 1e-3), (1, 1e-3 + 0.999 / 9), (8, 1e-3 + 0.999 * 8 / 9), (9, 1.0),
                                         (30, 1.0)])
def test_rewarm_goes_from_one_thousandth_to_one_at_step_n_minus_1(k, expected):
    group = {"rewarm_steps": 10, "rewarm_start": 1e-3}
    assert lowrank_adam._rewarm({"step": 200 + k, "rewarm_from": 200}, group) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("basis, variant", [("svd", "matmul"), ("dct", "matmul"), ("dct", "makhoul")],
                         ids=["svd", "dct", "dct_makhoul"])
@pytest.mark.parametrize("shape", [(12, 20), (20, 12), (12, 12)], ids=["m<n", "m>n", "m=n"])
@pytest.mark.parametrize("on_refresh", ["rotate", "rotate_abs"])
def test_rotate_maps_moments_into_new_basis(shape, on_refresh, basis, variant):
    """At a refresh the old moments are carried into the new subspace through the full space:
    m_old lives in span(Pₒ) as Pₒ·m_old, whose coordinates in the new basis are Pₙᵀ·(Pₒ·m_old).
    Then one Adam step of the new R is added: m = β1·m_rot + (1−β1)·R.
    `rotate`: v_rot = (Pₙᵀ·Pₒ)∘(Pₙᵀ·Pₒ) · v_old;  `rotate_abs` (official DCT code): |Pₙᵀ·Pₒ·v_old|."""
    p = nn.Parameter(torch.randn(*shape))
    opt = lowrank_adam.LowRankAdamW([{"params": [p], "rank": 3, "update_proj_gap": 2, "on_refresh": on_refresh,
                                      "basis": basis, "dct_variant": variant}])
    gen = torch.Generator().manual_seed(3)

    def basis_columns():  # m×r or n×r, orthonormal columns
        left, right = projector.matrices(opt.state[p], p.shape, variant)
        return (left if left is not None else right.T).clone(), left is not None

    for _ in range(2):
        p.grad = torch.randn(*shape, generator=gen)
        opt.step()
    state = opt.state[p]
    old_basis, left = basis_columns()
    m_old, v_old = state["exp_avg"].clone(), state["exp_avg_sq"].clone()
    p.grad = torch.randn(*shape, generator=gen)
    opt.step()
    new_basis, _ = basis_columns()
    to_new = new_basis.T @ old_basis  # r×r: old coordinates → new coordinates
    if left:
        m_rot, v_lin, v_sq = to_new @ m_old, to_new @ v_old, (to_new * to_new) @ v_old
        low = new_basis.T @ p.grad
    else:
        m_rot, v_lin, v_sq = m_old @ to_new.T, v_old @ to_new.T, v_old @ (to_new * to_new).T
        low = p.grad @ new_basis
    v_rot = v_sq if on_refresh == "rotate" else v_lin.abs()
    assert not torch.allclose(to_new.abs(), torch.eye(3), atol=1e-2)  # the subspace did change
    assert torch.allclose(state["exp_avg"], 0.9 * m_rot + 0.1 * low, atol=1e-5)
    assert torch.allclose(state["exp_avg_sq"], 0.999 * v_rot + 0.001 * low * low, atol=1e-5)
    assert state["adam_step"] == 3


def test_bf16_steps_in_chunks_of_at_most_the_budget():
    """fp32 copies of bf16 weights are made a chunk at a time: consecutive runs that stay within the
    budget (a tensor larger than it forms a chunk of its own)."""
    items = [(torch.zeros(n),) for n in (3, 3, 3, 9, 1)]
    chunks = lowrank_adam._chunks(items, budget=7)
    assert [[item[0].numel() for item in chunk] for chunk in chunks] == [[3, 3], [3], [9], [1]]


@pytest.mark.parametrize("eps_form, denominator", [("galore", lambda g, eps: g.abs() + eps / math.sqrt(0.001)),
                                                   ("torch", lambda g, eps: g.abs() + eps)])
def test_eps_form_of_the_first_step(eps_form, denominator):
    """First Adam step: m̂ = g, v̂ = g². galore-torch adds ε to √v (before bias correction), so the
    update is lr·g/(|g| + ε/√(1−β2)); torch's AdamW (FRUGAL, DCT-AdamW) adds it to √v̂: lr·g/(|g| + ε).
    Checked on a dense weight and, through the basis, on a projected one."""
    eps, lr = 0.05, 0.1
    dense, projected = nn.Parameter(torch.zeros(6)), nn.Parameter(torch.zeros(12, 8))
    opt = lowrank_adam.LowRankAdamW([{"params": [projected], "rank": 3, "update_proj_gap": 5},
                                     {"params": [dense]}], lr=lr, eps=eps, eps_form=eps_form)
    dense.grad, projected.grad = torch.randn(6), torch.randn(12, 8)
    opt.step()
    assert torch.allclose(dense.detach(), -lr * dense.grad / denominator(dense.grad, eps), atol=1e-6)
    q = opt.state[projected]["proj_right"]
    low = projected.grad @ q.T
    assert torch.allclose(projected.detach(), -lr * (low / denominator(low, eps)) @ q, atol=1e-6)


@pytest.mark.parametrize("residual, kept, factor", [("fira", 0.25, 1.0), ("fira_paper", 1.0, 0.25)])
def test_fira_first_step_in_the_official_and_the_paper_form(residual, kept, factor):
    """First step on a 12×8 weight (right side, rank 3, α = 0.25), expected from an SVD taken
    here: N = (1−β1)·R/(√((1−β2)·R²) + ε), φ = ‖N_i‖/‖R_i‖ per row, and
    W = −lr·√(1−β2)/(1−β1)·(α·N·Q + factor·φ ⊙ (G − kept·R·Q)): the official code drops α·back(R)
    and adds S unscaled (kept α, factor 1), the paper drops the orthogonal residual and scales S
    by α (kept 1, factor α)."""
    torch.manual_seed(0)
    lr, eps, alpha = 0.1, 1e-6, 0.25
    p = nn.Parameter(torch.zeros(12, 8))
    opt = lowrank_adam.LowRankAdamW([{"params": [p], "rank": 3, "update_proj_gap": 5, "scale": alpha,
                                      "residual": residual}], lr=lr, eps=eps)
    grad = torch.randn(12, 8)
    p.grad = grad.clone()
    opt.step()
    q = torch.linalg.svd(grad.double(), full_matrices=False)[2][:3]
    low = grad.double() @ q.T
    normalized = 0.1 * low / (math.sqrt(0.001) * low.abs() + eps)
    phi = normalized.norm(dim=1, keepdim=True) / low.norm(dim=1, keepdim=True)
    residual_part = phi * (grad.double() - kept * low @ q)
    expected = -lr * math.sqrt(0.001) / 0.1 * (alpha * normalized @ q + factor * residual_part)
    assert torch.allclose(p.detach().double(), expected, rtol=1e-5, atol=1e-6)


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


def frugal_pair(residual_lr_scale=0.5):
    """Two blocks A (index 0) and B (index 1), density 0.5 (k = 1 active), refresh every 2 steps."""
    a, b = nn.Parameter(torch.zeros(6, 4)), nn.Parameter(torch.zeros(4, 6))
    opt = frugal.BlockAdamW([{"params": [a, b], "density": 0.5, "update_proj_gap": 2,
                              "block_order": "descending", "residual_lr_scale": residual_lr_scale}],
                            lr=0.1, eps=1e-8, eps_form="torch")
    return a, b, opt


@pytest.mark.parametrize("count, density, period, order, expected", [
    (14, 0.25, 0, "descending", {13, 12, 11, 10}),  # round(3.5) = 4: the last four weights first
    (14, 0.25, 1, "descending", {9, 8, 7, 6}),
    (14, 0.25, 3, "descending", {1, 0, 13, 12}),  # wraps around
    (14, 0.25, 3, "ascending", {12, 13, 0, 1}),
    (10, 0.25, 0, "descending", {9, 8}),  # round(2.5) = 2: halves go to even, as in the official code
    (2, 0.25, 0, "descending", set()),  # round(0.5) = 0
])
def test_frugal_blocks_in_order(count, density, period, order, expected):
    assert frugal.active_blocks(count, density, period, order) == expected


def test_frugal_adam_on_the_active_block_signsgd_on_the_rest():
    """Step 0 (period 0, descending): B is state-full, A state-free. B's first Adam step (ε on √v̂)
    moves it by lr·g/(|g|+ε); A by lr·s·sign(g). At step 2 (period 1) A becomes state-full with fresh
    moments and B loses its state."""
    a, b, opt = frugal_pair()
    gen = torch.Generator().manual_seed(4)
    a.grad, b.grad = torch.randn(6, 4, generator=gen), torch.randn(4, 6, generator=gen)
    opt.step()
    assert torch.equal(a.detach(), -0.1 * 0.5 * a.grad.sign())
    assert torch.allclose(b.detach(), -0.1 * b.grad / (b.grad.abs() + 1e-8), rtol=1e-6, atol=0)
    assert "exp_avg" not in opt.state[a] and torch.equal(opt.state[b]["exp_avg"], 0.1 * b.grad)
    for _ in range(2):
        a.grad, b.grad = torch.randn(6, 4, generator=gen), torch.randn(4, 6, generator=gen)
        opt.step()
    assert opt.state[a]["adam_step"] == 1 and torch.equal(opt.state[a]["exp_avg"], 0.1 * a.grad)
    assert set(opt.state[b]) == {"step"} and opt.state[b]["step"] == 3


def test_frugal_state_is_the_active_blocks_moments_only():
    model = TwoLayer()
    opt = frugal.build(model, density=0.5, update_proj_gap=3)
    train(opt, model, 1)
    total, by_group = state_bytes(opt)
    assert by_group[0] == 2 * 4 * model.mlp.weight.numel()  # descending: the last weight (mlp) first


@pytest.mark.parametrize("kwargs, key", [
    ({"rank": 0}, "optimizer.rank"), ({"rank": -2}, "optimizer.rank"), ({"rank": 100}, "optimizer.rank"),
    ({"update_proj_gap": 0}, "optimizer.update_proj_gap"), ({"basis": "qr"}, "optimizer.basis"),
    ({"proj_type": "middle"}, "optimizer.proj_type"), ({"residual": "x"}, "optimizer.residual"),
    ({"on_refresh": "reset"}, "optimizer.on_refresh"), ({"lr": -1.0}, "optimizer.lr"),
    ({"target_modules": ["nothing"]}, "optimizer.target_modules"), ({"dct_variant": "fft"}, "optimizer.dct_variant"),
    ({"eps_form": "adam"}, "optimizer.eps_form"), ({"rewarm_steps": -1}, "optimizer.rewarm_steps"),
    ({"rewarm_start": 0.0}, "optimizer.rewarm_start"),
])
def test_bad_input_names_the_key(kwargs, key):
    (value,) = kwargs.values()
    with pytest.raises(ConfigError, match="^" + re.escape(f"{key}={value!r}: ")):
        lowrank_adam.build(TwoLayer(), **{"rank": 4, **kwargs})


def test_sgd_takes_its_settings_and_decays_matrices_only():
    groups = sgd.build(TwoLayer(), lr=0.5, momentum=0.3, nesterov=True, weight_decay=0.01).param_groups
    assert [(g["lr"], g["momentum"], g["nesterov"], g["weight_decay"], len(g["params"])) for g in groups] == [
        (0.5, 0.3, True, 0.01, 3), (0.5, 0.3, True, 0.0, 4)]


@pytest.mark.parametrize("kwargs, line", [({"lr": 0}, "optimizer.lr=0: must be > 0"),
                                          ({"momentum": 1.0}, "optimizer.momentum=1.0: must be in [0, 1)")])
def test_sgd_bad_input_is_one_line(kwargs, line):
    with pytest.raises(ConfigError, match="^" + re.escape(line) + "$"):
        sgd.build(TwoLayer(), **kwargs)


def test_build_passes_every_setting_to_the_groups():
    settings = {"rank": 3, "update_proj_gap": 7, "scale": 0.5, "proj_type": "left", "basis": "dct", "residual": "fira",
                "on_refresh": "rotate", "residual_lr_scale": 0.2, "seed": 5, "power_iters": 3, "dct_variant": "makhoul",
                "rewarm_steps": 4, "rewarm_start": 0.01}
    opt = lowrank_adam.build(TwoLayer(), lr=0.02, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.1, eps_form="torch",
                             **settings)
    projected = opt.param_groups[0]
    assert {k: projected[k] for k in settings} == settings
    assert all((g["lr"], g["betas"], g["eps"], g["eps_form"]) == (0.02, (0.8, 0.9), 1e-3, "torch")
               for g in opt.param_groups)


def test_the_optimizer_default_is_galore_eps_on_dense_groups_too():
    """LowRankAdamW without eps_form: ε is added to √v before bias correction, on an unprojected
    tensor too: the first step is lr·g/(|g| + ε/√(1−β2))."""
    eps, lr = 0.05, 0.1
    dense = nn.Parameter(torch.zeros(6))
    opt = lowrank_adam.LowRankAdamW([{"params": [dense]}], lr=lr, eps=eps)
    dense.grad = torch.randn(6)
    opt.step()
    assert torch.allclose(dense.detach(), -lr * dense.grad / (dense.grad.abs() + eps / math.sqrt(0.001)), atol=1e-6)


def test_reset_all_counts_the_dense_steps_one_by_one():
    """T = 4: no reset before the step at index 4, so after 3 steps every tensor has taken 3 Adam steps."""
    model = TwoLayer()
    opt = lowrank_adam.build(model, rank=4, update_proj_gap=4, on_refresh="reset_all")
    train(opt, model, 3)
    assert {opt.state[p]["adam_step"] for p in model.parameters()} == {3}
    train(opt, model, 2)
    assert {opt.state[p]["adam_step"] for p in model.parameters()} == {1}


@pytest.mark.parametrize("kwargs, line", [({"lr": 0}, "optimizer.lr=0: must be > 0"),
                                          ({"weight_decay": -1}, "optimizer.weight_decay=-1: must be >= 0"),
                                          ({"matrix_lr_scale": 0}, "optimizer.matrix_lr_scale=0: must be > 0")])
def test_adamw_bad_input_is_one_line(kwargs, line):
    with pytest.raises(ConfigError, match="^" + re.escape(line) + "$"):
        adamw.build(TwoLayer(), **kwargs)


@pytest.mark.parametrize("kwargs, line", [
    ({"update_proj_gap": 0}, "optimizer.update_proj_gap=0: must be a positive integer"),
    ({"density": 1.5}, "optimizer.density=1.5: must be in [0, 1]"),
    ({"residual_lr_scale": -0.5}, "optimizer.residual_lr_scale=-0.5: must be >= 0")])
def test_frugal_bad_input_is_one_line(kwargs, line):
    with pytest.raises(ConfigError, match="^" + re.escape(line) + "$"):
        frugal.build(TwoLayer(), **kwargs)


def test_unmatched_target_modules_is_one_line():
    with pytest.raises(ConfigError, match="^" + re.escape(
            "optimizer.target_modules=['nothing']: match no 2-D linear weight of this model") + "$"):
        lowrank_adam.build(TwoLayer(), rank=4, target_modules=["nothing"])


def test_rank_one_is_allowed():
    assert lowrank_adam.build(TwoLayer(), rank=1).param_groups[0]["rank"] == 1


@pytest.mark.parametrize("kwargs, key", [
    ({"density": 1.5}, "optimizer.density"), ({"density": -0.1}, "optimizer.density"),
    ({"update_proj_gap": 0}, "optimizer.update_proj_gap"), ({"block_order": "random"}, "optimizer.block_order"),
    ({"residual_lr_scale": -1.0}, "optimizer.residual_lr_scale"), ({"lr": 0.0}, "optimizer.lr"),
    ({"eps_form": "adam"}, "optimizer.eps_form"), ({"target_modules": ["nothing"]}, "optimizer.target_modules"),
])
def test_frugal_bad_input_names_the_key(kwargs, key):
    (value,) = kwargs.values()
    with pytest.raises(ConfigError, match="^" + re.escape(f"{key}={value!r}: ")):
        frugal.build(TwoLayer(), **kwargs)


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
