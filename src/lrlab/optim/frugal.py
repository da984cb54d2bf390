"""FRUGAL (Zmushko et al. 2024, arXiv 2411.07837), the block-wise variant: state-full AdamW on
a few whole weight matrices, state-free signSGD on all the others.

This is the official `--optimizer frugal` of the pre-training scripts (utils/args_utils.py maps
it to `block_adamw`; BlockOptimizer in frugal/proj_optimizer_templates.py and AdamW in
frugal/adamw.py of the official code, read at its first author's initial commit c7ebe4c, in the
history of the fork hungquangbui02022003/FRUGAL). The "blocks"
are the projectable weights themselves — the 2-D attention/MLP linear weights, in module
order — and every T = `update_proj_gap` steps (at steps 0, T, 2T, …):
- k = round(L·density) of the L blocks become active (Python's round, as the official code);
- `descending` (the official scripts' order) takes the k blocks ending at index
  L−1−j·k (mod L) at the j-th refresh and walks down: the last layers first, then further back,
  wrapping around; `ascending` starts at j·k (mod L) and walks up;
- every block's state is dropped; each active block starts Adam afresh (zero moments, bias
  correction from step 1: `reset_statistics`, on in the official scripts).
An active block gets Adam on its whole gradient (lr × `proj_params_lr_scale`, 1.0 in every
official experiment, so not exposed); an inactive block W ← W − lr·s·sign(G), s =
`residual_lr_scale` (the official `inactive_lr_scale`: 1.0 for pre-training, 0.1 for
fine-tuning). Everything else (embeddings, norms, lm_head) gets AdamW in the same optimizer.
The official AdamW adds ε to the bias-corrected √v̂ (`eps_form: torch`).

Where lrlab differs from the official code: weight decay is applied after the update
(W ← W − lr·wd·W; the official code decays before it: a difference of lr·wd·update, nothing at
wd = 0, the official scripts' value), and 1-D parameters are never decayed.

The selection is a function of the refresh index, so the state holds only the moments of the
active blocks and each block's step count (ints and tensors; resumes exactly).
"""

import torch

from lrlab.errors import require
from lrlab.optim import lowrank_adam
from lrlab.optim.routing import DEFAULT_TARGETS, decay_groups, split_params

ORDERS = ("descending", "ascending")


def active_blocks(count: int, density: float, period: int, order: str) -> set[int]:
    """Indices of the blocks that are state-full during the `period`-th subspace (from 0)."""
    k = round(count * density)
    if order == "descending":
        return {(count - 1 - period * k - q) % count for q in range(k)}
    return {(period * k + q) % count for q in range(k)}


def block_step(group: dict, states) -> None:
    """One FRUGAL step of the blocks in `group` (`states`: the optimizer's state by parameter)."""
    params, gap = group["params"], group["update_proj_gap"]
    stateful, free = [], []
    for index, p in enumerate(params):
        if p.grad is None:
            continue
        state = states[p]
        state.setdefault("step", 0)
        if state["step"] % gap == 0:
            _restart(state, p, index in active_blocks(len(params), group["density"], state["step"] // gap,
                                                      group["block_order"]))
        state["step"] += 1
        (stateful if "exp_avg" in state else free).append(p)
    lowrank_adam._dense_step(stateful, [states[p] for p in stateful], group, [1.0] * len(stateful))
    if free:
        torch._foreach_add_(free, torch._foreach_sign([p.grad for p in free]),
                            alpha=-group["lr"] * group["residual_lr_scale"])


def _restart(state: dict, p: torch.Tensor, active: bool) -> None:
    for key in ("exp_avg", "exp_avg_sq", "adam_step"):
        state.pop(key, None)
    if active:
        lowrank_adam._new_moments(state, p)


class BlockAdamW(lowrank_adam.LowRankAdamW):
    """LowRankAdamW whose groups with `density` take the block-wise step above."""

    def group_step(self, group: dict, params: list[torch.Tensor]) -> None:
        if "density" in group:
            block_step(group, self.state)
        else:
            super().group_step(group, params)


def build(model: torch.nn.Module, lr: float = 1e-3, density: float = 0.25, update_proj_gap: int = 200,
          block_order: str = "descending", residual_lr_scale: float = 1.0, target_modules=DEFAULT_TARGETS,
          betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
          eps_form: str = "torch") -> torch.optim.Optimizer:
    require(lr > 0, "optimizer.lr", lr, "must be > 0")
    require(0 <= density <= 1, "optimizer.density", density, "must be in [0, 1]")
    require(isinstance(update_proj_gap, int) and update_proj_gap > 0, "optimizer.update_proj_gap",
            update_proj_gap, "must be a positive integer")
    require(block_order in ORDERS, "optimizer.block_order", block_order, f"one of {', '.join(ORDERS)}")
    require(residual_lr_scale >= 0, "optimizer.residual_lr_scale", residual_lr_scale, "must be >= 0")
    require(eps_form in lowrank_adam.EPS_FORMS, "optimizer.eps_form", eps_form,
            f"one of {', '.join(lowrank_adam.EPS_FORMS)}")
    blocks, regular = split_params(model, target_modules)
    require(bool(blocks), "optimizer.target_modules", list(target_modules), "match no 2-D linear weight of this model")
    block_group = {"params": [p for _, p in blocks], "density": density, "update_proj_gap": update_proj_gap,
                   "block_order": block_order, "residual_lr_scale": residual_lr_scale}
    return BlockAdamW([block_group, *decay_groups(regular, weight_decay)], lr=lr, betas=betas, eps=eps,
                      weight_decay=weight_decay, eps_form=eps_form)
