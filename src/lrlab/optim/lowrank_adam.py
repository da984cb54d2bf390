"""LowRankAdamW: one Adam step for GaLore, Fira, DCT projection, FRUGAL and momentum reset.

For a projected weight W with gradient G (see `projector.py` for P, Q and the sides):
    R = project(G);  m ← β1·m + (1−β1)·R;  v ← β2·v + (1−β2)·R²;  N = m/(√v + ε)
    step = lr·√(1−β2ᵗ)/(1−β1ᵗ)                        (bias correction folded in, galore-torch)
    W ← W − step·(α·back(N) + residual);  W ← W − lr·wd·W   (decoupled decay after the update)
The basis is refreshed from G at steps 0, T, 2T, … (the counter is read before it is
incremented). `residual` picks what happens to the part of G the projection drops:
- `none` (GaLore, Zhao et al. 2024): nothing.
- `fira` (Chen et al. 2024, as the official `fira` package): S = φ ⊙ (G − α·back(R)) with
  φ = ‖N‖/(‖R‖+1e-8) per row (m ≥ n) or column (m < n) of the long side; a norm-growth
  limiter caps ‖S‖ at γ·‖S_prev‖ (γ = 1.01, never on the first step); S is not scaled by α.
- `fira_paper`: the paper's form, S from the orthogonal residual (I−PPᵀ)G and α on both terms.
- `frugal` (Zmushko et al. 2024): signSGD on the residual G − back(R), lr × `residual_lr_scale`.
`on_refresh` picks what happens to the moments at a refresh: `keep` (GaLore: neither reset
nor rotated; bias correction keeps counting), `reset` (FRUGAL and momentum reset: zero the
moments and restart bias correction; `rewarm_steps` > 0 also re-warms the lr linearly from
`rewarm_start`× over that many steps, as in the pretraining benchmark), `rotate` (map the
first moment into the new basis; the second moment through the element-wise squared
rotation, which keeps it non-negative — our choice, the papers leave it open).
Groups without `rank` get the same Adam math unprojected (AdamW inside the same optimizer).
State holds only tensors and ints; bases stay fp32 (int64 indices for `dct`) even when the
weights are bf16, also after `load_state_dict`.

Cost: the unprojected groups (embeddings, lm_head: most of an LLM's parameters) go through
torch's fused Adam kernel, one pass over each tensor (see `_dense_step`); a projected weight
receives α·back(N) by one addmm_ into W (no full-size temporary), and the Fira/FRUGAL residual
G − α·back(R) comes from one addmm.
"""

import math
from collections import defaultdict
from collections.abc import Callable

import torch

from lrlab.errors import require
from lrlab.optim import projector
from lrlab.optim.projector import BASES, SIDES
from lrlab.optim.routing import decay_groups, evaluate_closure, split_params

RESIDUALS = ("none", "fira", "fira_paper", "frugal")
ON_REFRESH = ("keep", "reset", "rotate")
FIRA_LIMIT = 1.01
PROJECTED_DEFAULTS = {"scale": 1.0, "proj_type": "std", "basis": "svd", "residual": "none",
                      "on_refresh": "keep", "rewarm_steps": 0, "rewarm_start": 1e-3,
                      "residual_lr_scale": 1.0, "seed": 0, "power_iters": 2}


class LowRankAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if "rank" in group:
                for key, value in PROJECTED_DEFAULTS.items():
                    group.setdefault(key, value)
        self.register_load_state_dict_post_hook(_bases_to_fp32)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if "rank" in group:
                for p in params:
                    _projected_step(p, self.state[p], group)
            else:
                _dense_step(params, [self.state[p] for p in params], group)
            _decay(params, group)
        return loss


def _adam(state: dict, grad: torch.Tensor, group: dict) -> tuple[torch.Tensor, float]:
    """Update the moments with `grad`; return N = m/(√v+ε) and the bias-corrected step size."""
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(grad)
        state["exp_avg_sq"] = torch.zeros_like(grad)
        state["adam_step"] = 0
    beta1, beta2 = group["betas"]
    state["adam_step"] += 1
    t = state["adam_step"]
    state["exp_avg"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    denom = state["exp_avg_sq"].sqrt().add_(group["eps"])
    step_size = group["lr"] * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    return torch.div(state["exp_avg"], denom, out=denom), step_size


def _decay(params: list[torch.Tensor], group: dict) -> None:
    """W ← W − lr·wd·W, after the update (galore-torch's order)."""
    if group["weight_decay"] > 0.0 and params:
        torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])


def _dense_step(params: list[torch.Tensor], states: list[dict], group: dict) -> None:
    """The Adam rule above on unprojected tensors, by torch's fused Adam kernel (one pass per
    tensor). The kernel divides by √v/√(1−β2ᵗ) + ε'; with ε' = ε/√(1−β2ᵗ) its update
    lr/(1−β1ᵗ)·m/(√v/√(1−β2ᵗ) + ε') is lr·√(1−β2ᵗ)/(1−β1ᵗ)·m/(√v + ε), as above. The kernel
    takes one t (and one device and dtype) per call, hence the batches."""
    beta1, beta2 = group["betas"]
    batches = defaultdict(list)
    for p, state in zip(params, states):
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            state["adam_step"] = 0
        state["adam_step"] += 1
        batches[state["adam_step"], p.device, p.dtype].append((p, state))
    for (t, device, _), batch in batches.items():
        torch._fused_adam_([p for p, _ in batch], [p.grad for p, _ in batch], [s["exp_avg"] for _, s in batch],
                           [s["exp_avg_sq"] for _, s in batch], [], [torch.tensor(float(t), device=device)] * len(batch),
                           lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                           eps=group["eps"] / math.sqrt(1.0 - beta2 ** t), amsgrad=False, maximize=False)


def _refresh(p: torch.Tensor, state: dict, grad: torch.Tensor, group: dict) -> None:
    seed = group["seed"] * 1_000_003 + state["step"]
    new = projector.refresh(grad, group["rank"], group["proj_type"], group["basis"], seed, group["power_iters"])
    had_basis = any(k in state for k in projector.STATE_KEYS)
    if had_basis and "exp_avg" in state:
        if group["on_refresh"] == "reset":
            for key in ("exp_avg", "exp_avg_sq"):
                state[key].zero_()
            state["adam_step"] = 0
            state["rewarm_from"] = state["step"]
        elif group["on_refresh"] == "rotate":
            _rotate_moments(state, new, grad.shape)
    for key in projector.STATE_KEYS:
        state.pop(key, None)
    state.update(new)


def _rotate_moments(state: dict, new: dict, shape: torch.Size) -> None:
    to_left, to_right = projector.rotation(state, new, shape)
    for key, power in (("exp_avg", 1), ("exp_avg_sq", 2)):
        moment = state[key]
        if to_left is not None:
            moment = to_left.pow(power) @ moment
        if to_right is not None:
            moment = moment @ to_right.pow(power)
        state[key] = moment.contiguous()


def _rewarm(state: dict, group: dict) -> float:
    if group["rewarm_steps"] <= 0 or "rewarm_from" not in state:
        return 1.0
    progress = min(1.0, (state["step"] - state["rewarm_from"] + 1) / group["rewarm_steps"])
    return group["rewarm_start"] + (1.0 - group["rewarm_start"]) * progress


def _add_back(p: torch.Tensor, low: torch.Tensor, left, right, alpha: float) -> None:
    """p ← p + alpha·back(low); into an fp32 weight by one addmm_, without a full-size temporary."""
    if p.dtype == torch.float32:
        p.addmm_(*projector.back_factors(low, left, right), alpha=alpha)
    else:
        p.add_(projector.project_back(low, left, right), alpha=alpha)


def _projected_step(p: torch.Tensor, state: dict, group: dict) -> None:
    grad = p.grad.float()  # the gradient itself when it is fp32
    state.setdefault("step", 0)
    if state["step"] % group["update_proj_gap"] == 0:
        _refresh(p, state, grad, group)
    left, right = projector.matrices(state, grad.shape)
    low = projector.project(grad, left, right)
    normalized, step_size = _adam(state, low, group)
    rewarm = _rewarm(state, group)
    step_size *= rewarm
    if group["residual"] in ("fira", "fira_paper"):  # update = α·back(N) + factor·S, formed in S's buffer
        update, factor = _fira_residual(grad, low, normalized, left, right, state, group)
        update.addmm_(*projector.back_factors(normalized, left, right), beta=factor, alpha=group["scale"])
        p.add_(update, alpha=-step_size)
    else:
        if group["residual"] == "frugal":
            dropped = torch.addmm(grad, *projector.back_factors(low, left, right), alpha=-1.0)
            p.add_(dropped.sign_(), alpha=-group["lr"] * group["residual_lr_scale"] * rewarm)
        _add_back(p, normalized, left, right, alpha=-step_size * group["scale"])
    state["step"] += 1


def _fira_residual(grad, low, normalized, left, right, state: dict, group: dict) -> tuple[torch.Tensor, float]:
    """S = φ ⊙ (G − α·back(R)) (`fira_paper`: G − back(R)) and the factor S enters the update
    with: 1/limiter, times α for `fira_paper`."""
    scale, paper = group["scale"], group["residual"] == "fira_paper"
    dropped = torch.addmm(grad, *projector.back_factors(low, left, right), alpha=-1.0 if paper else -scale)
    if normalized.shape[0] < normalized.shape[1]:
        factor = normalized.norm(dim=0) / (low.norm(dim=0) + 1e-8)
    else:
        factor = (normalized.norm(dim=1) / (low.norm(dim=1) + 1e-8)).unsqueeze(1)
    scaled = dropped.mul_(factor)
    norm = scaled.norm()
    limiter = 1.0
    if "residual_norm" in state:
        limiter = float(torch.clamp(norm / (state["residual_norm"] + 1e-8), min=FIRA_LIMIT) / FIRA_LIMIT)
    state["residual_norm"] = norm / limiter
    return scaled, (scale if paper else 1.0) / limiter


def _bases_to_fp32(optimizer: torch.optim.Optimizer) -> None:
    """torch casts floating state to the parameter's dtype on load; projected state stays fp32."""
    for group in optimizer.param_groups:
        if "rank" not in group:
            continue
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key in ("proj_left", "proj_right", "exp_avg", "exp_avg_sq", "residual_norm"):
                if key in state:
                    state[key] = state[key].float()


def build(model: torch.nn.Module, lr: float = 0.01, rank: int = 128, update_proj_gap: int = 200,
          scale: float = 0.25, proj_type: str = "std", basis: str = "svd", residual: str = "none",
          on_refresh: str = "keep", target_modules=("attn", "mlp"), exclude=("embed", "lm_head", "norm"),
          betas=(0.9, 0.999), eps: float = 1e-6, weight_decay: float = 0.0, rewarm_steps: int = 0,
          rewarm_start: float = 1e-3, residual_lr_scale: float = 1.0, seed: int = 0,
          power_iters: int = 2) -> LowRankAdamW:
    """The config-facing builder: routes 2-D attention/MLP weights to the projected group."""
    require(lr > 0, "optimizer.lr", lr, "must be > 0")
    require(isinstance(rank, int) and rank > 0, "optimizer.rank", rank, "must be a positive integer")
    require(isinstance(update_proj_gap, int) and update_proj_gap > 0, "optimizer.update_proj_gap",
            update_proj_gap, "must be a positive integer")
    for key, value, allowed in (("proj_type", proj_type, SIDES), ("basis", basis, BASES),
                                ("residual", residual, RESIDUALS), ("on_refresh", on_refresh, ON_REFRESH)):
        require(value in allowed, f"optimizer.{key}", value, f"one of {', '.join(allowed)}")
    projected, regular = split_params(model, target_modules, exclude)
    require(bool(projected), "optimizer.target_modules", list(target_modules),
            "match no 2-D linear weight of this model")
    smallest = min(min(p.shape) for _, p in projected)
    require(rank <= smallest, "optimizer.rank", rank,
            f"must be <= {smallest}, the smaller side of the smallest projected weight")
    projected_group = {"params": [p for _, p in projected], "rank": rank, "update_proj_gap": update_proj_gap,
                       "scale": scale, "proj_type": proj_type, "basis": basis, "residual": residual,
                       "on_refresh": on_refresh, "rewarm_steps": rewarm_steps, "rewarm_start": rewarm_start,
                       "residual_lr_scale": residual_lr_scale, "seed": seed, "power_iters": power_iters}
    groups = [projected_group, *decay_groups(regular, weight_decay)]
    return LowRankAdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
