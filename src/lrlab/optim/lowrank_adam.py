"""LowRankAdamW: one Adam step for GaLore, Fira, DCT projection, FRUGAL and momentum reset.

For a projected weight W with gradient G (see `projector.py` for P, Q and the sides):
    R = project(G);  m ← β1·m + (1−β1)·R;  v ← β2·v + (1−β2)·R²;  N = m/(√v + ε)
    step = lr·√(1−β2ᵗ)/(1−β1ᵗ)                        (bias correction folded in, galore-torch)
    W ← W − step·(α·back(N) + residual);  W ← W − lr·wd·W   (decoupled decay after the update)
`eps_form: torch` adds ε to the bias-corrected √v̂ instead, as torch's AdamW and the FRUGAL
and DCT-AdamW code do: N = m/(√v + ε·√(1−β2ᵗ)), the same step size.
The basis is refreshed from G at steps 0, T, 2T, … (the counter is read before it is
incremented). `residual` picks what happens to the part of G the projection drops:
- `none` (GaLore, Zhao et al. 2024): nothing.
- `fira` (Chen et al. 2024, as the official `fira` package): S = φ ⊙ (G − α·back(R)) with
  φ = ‖N‖/(‖R‖+1e-8) per row (m ≥ n) or column (m < n) of the long side; a norm-growth
  limiter caps ‖S‖ at γ·‖S_prev‖ (γ = 1.01, never on the first step); S is not scaled by α.
- `fira_paper`: the paper's form, S from the orthogonal residual (I−PPᵀ)G and α on both terms.
- `frugal` (Zmushko et al. 2024, the SVD variant): signSGD on the residual G − back(R),
  lr × `residual_lr_scale`.
`on_refresh` picks what happens to the moments at a refresh:
- `keep` (GaLore): neither reset nor rotated; bias correction keeps counting.
- `reset_all` (momentum reset of the memory-efficient pretraining benchmark, arXiv 2505.22922;
  its code rebuilds the whole optimizer at a reset, torchrun_main_DDP.py of
  OptimAI-Lab/Memory_Efficient_Pretraining): the moments of *every* group are zeroed and bias
  correction restarts, the unprojected groups every T steps in step with the refreshes.
- `reset_projected` (the GaLore-only variant; FRUGAL's SVD variant resets this way): only the
  projected weights' moments.
  With `rewarm_steps` n > 0 a reset also re-warms the lr of the groups it reset, by the
  benchmark's `cosine_quick_recovery` rule: × (s + (1−s)·k/(n−1)) at the k-th step after the
  reset (k = 0 … n−1, s = `rewarm_start`, 0.001), 1× from step n−1 on.
- `rotate`: map the first moment into the new basis and the second through the element-wise
  squared rotation R∘R, which keeps it non-negative (our choice).
- `rotate_abs`: the official DCT code's form (fft_projector.py `rotate_subspace`, then
  `vt.abs_()` in dct_adamw.py): both moments through R, then |v·R|.
Groups without `rank` get the same Adam math unprojected (AdamW inside the same optimizer),
with fp32 moments also for bf16 parameters. FRUGAL's block-wise variant (`frugal.py`) is a
subclass that adds groups with `density`.

Under FSDP2 (`trainer=fsdp2`) the step above is taken on each rank's rows of W and G
(`sharded.py`): P and the right side's moments are sharded by rows like G, Pᵀ·G is one all-reduce
of r×n (left side; the right side needs none), Fira's norms one of a scalar or n column norms,
and G is gathered whole only at a refresh.

State holds only tensors and ints. `load_state_dict` restores every state tensor with the dtype
it was saved in (torch would cast it to the parameter's: int64 DCT indices to floats, fp32
moments of bf16 weights through bf16). The step makes no host synchronisation: no tensor is
read back to the host and none is built from host data (a refresh's SVD, eigh or QR checks its
result on the host; the DCT refresh does not).

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
from lrlab.optim import projector, sharded
from lrlab.optim.projector import BASES, DCT_VARIANTS, SIDES
from lrlab.optim.state import restore_saved_dtypes
from lrlab.optim.routing import DEFAULT_TARGETS, decay_groups, evaluate_closure, split_params

RESIDUALS = ("none", "fira", "fira_paper", "frugal")
ON_REFRESH = ("keep", "reset_all", "reset_projected", "rotate", "rotate_abs")
RESETS = ("reset_all", "reset_projected")
EPS_FORMS = ("galore", "torch")
FIRA_LIMIT = 1.01
PROJECTED_DEFAULTS = {"scale": 1.0, "proj_type": "std", "basis": "svd", "residual": "none",
                      "on_refresh": "keep", "residual_lr_scale": 1.0, "seed": 0, "power_iters": 2,
                      "dct_variant": "matmul"}


class LowRankAdamW(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, eps_form: str = "galore"):
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "eps_form": eps_form, "reset_every": 0, "rewarm_steps": 0, "rewarm_start": 1e-3}
        super().__init__(params, defaults)
        for group in self.param_groups:
            if "rank" in group:
                for key, value in PROJECTED_DEFAULTS.items():
                    group.setdefault(key, value)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            self.group_step(group, params)
            _decay(params, group)
        return loss

    def group_step(self, group: dict, params: list[torch.Tensor]) -> None:
        """The update of one param group (before decay): projected, or dense Adam."""
        if "rank" in group:
            for p in params:
                _projected_step(p, self.state[p], group)
        else:
            states = [self.state[p] for p in params]
            _dense_step(params, states, group, _dense_clock(states, group))

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load, then every state tensor back in the dtype it was saved in."""
        super().load_state_dict(state_dict)
        restore_saved_dtypes(self, state_dict)


def _new_moments(state: dict, like: torch.Tensor) -> None:
    """Zero fp32 moments shaped like `like`; bias correction starts again."""
    state["exp_avg"] = torch.zeros_like(like, dtype=torch.float32)
    state["exp_avg_sq"] = torch.zeros_like(like, dtype=torch.float32)
    state["adam_step"] = 0


def _reset(state: dict) -> None:
    state["exp_avg"].zero_()
    state["exp_avg_sq"].zero_()
    state["adam_step"] = 0
    state["rewarm_from"] = state["step"]


def _adam(state: dict, grad: torch.Tensor, group: dict) -> tuple[torch.Tensor, float]:
    """Update the moments with `grad`; return N = m/(√v+ε) and the bias-corrected step size."""
    if "exp_avg" not in state:
        _new_moments(state, grad)
    beta1, beta2 = group["betas"]
    state["adam_step"] += 1
    t = state["adam_step"]
    state["exp_avg"].mul_(beta1).add_(grad, alpha=1.0 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    eps = group["eps"] * (math.sqrt(1.0 - beta2 ** t) if group["eps_form"] == "torch" else 1.0)
    denom = state["exp_avg_sq"].sqrt().add_(eps)
    step_size = group["lr"] * math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
    return torch.div(state["exp_avg"], denom, out=denom), step_size


def _decay(params: list[torch.Tensor], group: dict) -> None:
    """W ← W − lr·wd·W, after the update (galore-torch's order)."""
    if group["weight_decay"] > 0.0 and params:
        torch._foreach_add_(params, params, alpha=-group["lr"] * group["weight_decay"])


def _dense_clock(states: list[dict], group: dict) -> list[float]:
    """Per parameter, the lr multiplier of this step. A group with `reset_every` (set by
    `on_refresh: reset_all`) counts its steps and zeroes its moments every that many steps, in
    step with the projected group's refreshes, then re-warms."""
    if not group["reset_every"]:
        return [1.0] * len(states)
    multipliers = []
    for state in states:
        state.setdefault("step", 0)
        if state["step"] % group["reset_every"] == 0 and "exp_avg" in state:
            _reset(state)
        multipliers.append(_rewarm(state, group))
        state["step"] += 1
    return multipliers


def _dense_step(params: list[torch.Tensor], states: list[dict], group: dict, lr_scales: list[float]) -> None:
    """The Adam rule above on unprojected tensors, by torch's fused Adam kernel (one pass per
    tensor). The kernel divides by √v/√(1−β2ᵗ) + ε'; with ε' = ε/√(1−β2ᵗ) its update
    lr/(1−β1ᵗ)·m/(√v/√(1−β2ᵗ) + ε') is lr·√(1−β2ᵗ)/(1−β1ᵗ)·m/(√v + ε), as above (ε' = ε for
    `eps_form: torch`). The kernel takes one t, lr, device and dtype per call, hence the
    batches; its step count is a device tensor filled by a kernel, not copied from the host."""
    beta1, beta2 = group["betas"]
    batches = defaultdict(list)
    for p, state, lr_scale in zip(params, states, lr_scales):
        if "exp_avg" not in state:
            _new_moments(state, p)
        state["adam_step"] += 1
        batches[state["adam_step"], lr_scale, p.device, p.dtype].append((p, state))
    for (t, lr_scale, device, dtype), batch in batches.items():
        eps = group["eps"] / (math.sqrt(1.0 - beta2 ** t) if group["eps_form"] == "galore" else 1.0)
        step = torch.full((), float(t), device=device)
        kernel = {"lr": group["lr"] * lr_scale, "beta1": beta1, "beta2": beta2, "weight_decay": 0.0,
                  "eps": eps, "amsgrad": False, "maximize": False}
        if dtype == torch.float32:
            torch._fused_adam_([p for p, _ in batch], [p.grad for p, _ in batch], [s["exp_avg"] for _, s in batch],
                               [s["exp_avg_sq"] for _, s in batch], [], [step] * len(batch), **kernel)
            continue
        for chunk in _chunks(batch):  # the kernel wants one dtype: step fp32 copies, round once into p
            masters = [p.float() for p, _ in chunk]
            torch._fused_adam_(masters, [p.grad.float() for p, _ in chunk], [s["exp_avg"] for _, s in chunk],
                               [s["exp_avg_sq"] for _, s in chunk], [], [step] * len(chunk), **kernel)
            torch._foreach_copy_([p for p, _ in chunk], masters)


def _chunks(batch: list, budget: int = 1 << 24) -> list[list]:
    """Consecutive runs of `batch` of at most `budget` elements each (one tensor may exceed it),
    so that the fp32 copies of bf16 weights stay small next to the weights themselves."""
    chunks, size = [[]], 0
    for item in batch:
        if chunks[-1] and size + item[0].numel() > budget:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += item[0].numel()
    return chunks


def _refresh(state: dict, grad: torch.Tensor, group: dict, rows: sharded.Whole) -> None:
    """A new basis from the whole gradient (gathered once when it is sharded by rows); a stored
    P keeps this process's rows."""
    seed = group["seed"] * 1_000_003 + state["step"]
    new = projector.refresh(rows.gather(grad), group["rank"], group["proj_type"], group["basis"], seed,
                            group["power_iters"], group["dct_variant"])
    if "proj_left" in new:
        new["proj_left"] = new["proj_left"][rows.rows].contiguous()
    had_basis = any(k in state for k in projector.STATE_KEYS)
    if had_basis and "exp_avg" in state:
        if group["on_refresh"] in RESETS:
            _reset(state)
        elif group["on_refresh"] in ("rotate", "rotate_abs"):
            _rotate_moments(state, new, group, rows)
    for key in projector.STATE_KEYS:
        state.pop(key, None)
    state.update(new)


def _rotate_moments(state: dict, new: dict, group: dict, rows: sharded.Whole) -> None:
    """m → R·m; v → (R∘R)·v (`rotate`) or |R·v| (`rotate_abs`), R applied on each projected side:
    Pₙᵀ·Pₒ on the left (a sum over P's rows), Qₒ·Qₙᵀ on the right."""
    old_left, old_right = projector.matrices(state, rows.shape, group["dct_variant"], rows.rows)
    new_left, new_right = projector.matrices(new, rows.shape, group["dct_variant"], rows.rows)
    to_left = None if new_left is None else rows.sum(new_left.T @ old_left)
    to_right = None if new_right is None else old_right @ new_right.T
    squared = group["on_refresh"] == "rotate"
    for key in ("exp_avg", "exp_avg_sq"):
        second = key == "exp_avg_sq"
        power = 2 if second and squared else 1
        moment = state[key]
        if to_left is not None:
            moment = to_left.pow(power) @ moment
        if to_right is not None:
            moment = moment @ to_right.pow(power)
        state[key] = moment.abs() if second and not squared else moment.contiguous()


def _rewarm(state: dict, group: dict) -> float:
    """s + (1−s)·k/(n−1) at the k-th step after the last reset (k from 0), 1 from k = n−1 on."""
    steps = group["rewarm_steps"]
    if steps <= 0 or "rewarm_from" not in state:
        return 1.0
    progress = min(1.0, (state["step"] - state["rewarm_from"]) / (steps - 1)) if steps > 1 else 1.0
    return group["rewarm_start"] + (1.0 - group["rewarm_start"]) * progress


def _add_back(p: torch.Tensor, low: torch.Tensor, left, right, alpha: float) -> None:
    """p ← p + alpha·back(low); into an fp32 weight by one addmm_, without a full-size temporary."""
    if p.dtype == torch.float32:
        p.addmm_(*projector.back_factors(low, left, right), alpha=alpha)
    else:
        p.add_(projector.project_back(low, left, right), alpha=alpha)


def _projected_step(p: torch.Tensor, state: dict, group: dict) -> None:
    if sharded.is_sharded(p):  # FSDP2: the same rule on this rank's rows (sharded.py)
        sharded.sharded_step(p, state, group, _projected_update)
    else:  # the gradient itself when it is fp32
        _projected_update(p, p.grad.float(), state, group, sharded.Whole(p.shape))


def _projected_update(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict, rows: sharded.Whole) -> None:
    """Add the step of `grad` into `p`: the weight and its gradient whole, or the rows `rows`
    holds of them (then `state` holds the row-sharded state's rows too)."""
    state.setdefault("step", 0)
    if state["step"] % group["update_proj_gap"] == 0:
        _refresh(state, grad, group, rows)
    left, right = projector.matrices(state, rows.shape, group["dct_variant"], rows.rows)
    low = projector.project(grad, left, right)
    if left is not None:  # Pᵀ·G sums over all rows of G
        low = rows.sum(low)
    normalized, step_size = _adam(state, low, group)
    rewarm = _rewarm(state, group)
    step_size *= rewarm
    if group["residual"] in ("fira", "fira_paper"):  # update = α·back(N) + factor·S, formed in S's buffer
        update, factor = _fira_residual(grad, low, normalized, left, right, state, group, rows)
        update.addmm_(*projector.back_factors(normalized, left, right), beta=factor, alpha=group["scale"])
        p.add_(update, alpha=-step_size)
    else:
        if group["residual"] == "frugal":
            dropped = torch.addmm(grad, *projector.back_factors(low, left, right), alpha=-1.0)
            p.add_(dropped.sign_(), alpha=-group["lr"] * group["residual_lr_scale"] * rewarm)
        _add_back(p, normalized, left, right, alpha=-step_size * group["scale"])
    state["step"] += 1


def _fira_residual(grad, low, normalized, left, right, state: dict, group: dict,
                   rows: sharded.Whole) -> tuple[torch.Tensor, float]:
    """S = φ ⊙ (G − α·back(R)) / limiter (`fira_paper`: G − back(R)) and the factor S enters the
    update with (α for `fira_paper`, else 1). ‖φ ⊙ D‖ is taken from D's row (column) norms, so
    that φ and the limiter, a device scalar, scale D in one pass. R's rows are G's (right side)
    or R is whole; the norms over D's rows are sums over every process's rows (`rows`)."""
    scale, paper = group["scale"], group["residual"] == "fira_paper"
    dropped = torch.addmm(grad, *projector.back_factors(low, left, right), alpha=-1.0 if paper else -scale)
    low_rows = rows.shape[0] if left is None else low.shape[0]
    if low_rows < normalized.shape[1]:
        factor = normalized.norm(dim=0) / (low.norm(dim=0) + 1e-8)
        norm = (factor * rows.column_norms(dropped)).norm()
    else:
        factor = (normalized.norm(dim=1) / (low.norm(dim=1) + 1e-8)).unsqueeze(1)
        norm = rows.norm(factor * dropped.norm(dim=1, keepdim=True))
    if "residual_norm" in state:
        limiter = torch.clamp(norm / (state["residual_norm"] + 1e-8), min=FIRA_LIMIT) / FIRA_LIMIT
        factor = factor / limiter
        norm = norm / limiter
    state["residual_norm"] = norm
    return dropped.mul_(factor), scale if paper else 1.0


def build(model: torch.nn.Module, lr: float = 0.01, rank: int = 128, update_proj_gap: int = 200,
          scale: float = 0.25, proj_type: str = "std", basis: str = "svd", residual: str = "none",
          on_refresh: str = "keep", target_modules=DEFAULT_TARGETS, betas=(0.9, 0.999), eps: float = 1e-6,
          weight_decay: float = 0.0, rewarm_steps: int = 0, rewarm_start: float = 1e-3,
          residual_lr_scale: float = 1.0, seed: int = 0, power_iters: int = 2, dct_variant: str = "matmul",
          eps_form: str = "galore") -> LowRankAdamW:
    """The config-facing builder: routes 2-D attention/MLP weights to the projected group."""
    require(lr > 0, "optimizer.lr", lr, "must be > 0")
    require(isinstance(rank, int) and rank > 0, "optimizer.rank", rank, "must be a positive integer")
    require(isinstance(update_proj_gap, int) and update_proj_gap > 0, "optimizer.update_proj_gap",
            update_proj_gap, "must be a positive integer")
    require(isinstance(rewarm_steps, int) and rewarm_steps >= 0, "optimizer.rewarm_steps", rewarm_steps,
            "must be an integer >= 0")
    require(0 < rewarm_start <= 1, "optimizer.rewarm_start", rewarm_start, "must be in (0, 1]")
    for key, value, allowed in (("proj_type", proj_type, SIDES), ("basis", basis, BASES),
                                ("residual", residual, RESIDUALS), ("on_refresh", on_refresh, ON_REFRESH),
                                ("dct_variant", dct_variant, DCT_VARIANTS), ("eps_form", eps_form, EPS_FORMS)):
        require(value in allowed, f"optimizer.{key}", value, f"one of {', '.join(allowed)}")
    projected, regular = split_params(model, target_modules)
    require(bool(projected), "optimizer.target_modules", list(target_modules),
            "match no 2-D linear weight of this model")
    smallest = min(min(p.shape) for _, p in projected)
    require(rank <= smallest, "optimizer.rank", rank,
            f"must be <= {smallest}, the smaller side of the smallest projected weight")
    rewarm = {"rewarm_steps": rewarm_steps, "rewarm_start": rewarm_start}
    projected_group = {"params": [p for _, p in projected], "rank": rank, "update_proj_gap": update_proj_gap,
                       "scale": scale, "proj_type": proj_type, "basis": basis, "residual": residual,
                       "on_refresh": on_refresh, "residual_lr_scale": residual_lr_scale, "seed": seed,
                       "power_iters": power_iters, "dct_variant": dct_variant, **rewarm}
    dense_groups = decay_groups(regular, weight_decay)
    if on_refresh == "reset_all":
        for group in dense_groups:
            group.update(reset_every=update_proj_gap, **rewarm)
    return LowRankAdamW([projected_group, *dense_groups], lr=lr, betas=betas, eps=eps,
                        weight_decay=weight_decay, eps_form=eps_form)
