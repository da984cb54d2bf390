"""LIFT: sparse fine-tuning of principal weights (Liu et al., 2025, "LIFT the Veil for the Truth:
Principal Weights Emerge after Rank Reduction for Reasoning-Focused Supervised Fine-Tuning").

Mask: for each adapted weight W (m x n), take its rank-`filter_rank` approximation W_f and keep
the K = (m + n) * lora_rank entries of largest |W_f| (the parameter budget of a rank-`lora_rank`
LoRA). Update: AdamW on the masked entries only; the moments are stored for those K entries,
not for the full matrix. Every `refresh_every` steps the mask is recomputed from the current
weight; moments of entries kept by both masks carry over, new entries start from zero.

Baseline: `select: magnitude` keeps the K entries of largest |W| itself (plain magnitude-sparse
fine-tuning at the same budget, no rank reduction); everything else is the same.

How it plugs in: LIFT is one method that also supplies its optimizer. `transform_model` marks the
target weights and `train_also` modules trainable and records each target's budget by parameter
name; `build_optimizer` runs masked AdamW on the targets and dense AdamW on every other trainable
parameter, with the `optimizer` group's lr, betas, eps and weight decay (so `optimizer=adamw`,
the default; any other optimizer choice is refused).
"""

import torch
from torch import nn

from lrlab.adapters.base import Adapter, targeted
from lrlab.errors import require
from lrlab.optim.state import restore_saved_dtypes


def _largest(values: torch.Tensor, budget: int) -> torch.Tensor:
    return torch.topk(values.abs().flatten(), min(budget, values.numel())).indices.sort().values


def principal_mask(weight: torch.Tensor, filter_rank: int, budget: int) -> torch.Tensor:
    """Flat indices of the `budget` largest |entries| of the rank-`filter_rank` approximation."""
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return _largest((u[:, :filter_rank] * s[:filter_rank]) @ vh[:filter_rank], budget)


def magnitude_mask(weight: torch.Tensor, filter_rank: int, budget: int) -> torch.Tensor:
    """Flat indices of the `budget` largest |entries| of W itself (`filter_rank` unused)."""
    return _largest(weight.detach(), budget)


MASKS = {"principal": principal_mask, "magnitude": magnitude_mask}


class MaskedAdamW(torch.optim.Optimizer):
    """AdamW whose masked parameters keep moments only for their `budget` selected entries."""

    def __init__(self, params, budgets: dict, filter_rank: int, lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.0, refresh_every=100, select: str = "principal"):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.budgets, self.filter_rank, self.refresh_every = budgets, filter_rank, refresh_every
        self.mask = MASKS[select]

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's load, then the int64 entry indices (and every other state tensor) back in their saved dtype."""
        super().load_state_dict(state_dict)
        restore_saved_dtypes(self, state_dict)

    def _refresh(self, param, state):
        new = self.mask(param, self.filter_rank, self.budgets[param]).to(param.device)
        moments = (torch.zeros(new.numel(), device=param.device, dtype=param.dtype) for _ in range(2))
        exp_avg, exp_avg_sq = moments
        if "index" in state:
            kept = torch.isin(new, state["index"])
            position = torch.searchsorted(state["index"], new[kept])
            exp_avg[kept] = state["exp_avg"][position]
            exp_avg_sq[kept] = state["exp_avg_sq"][position]
        state.update(index=new, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                state["step"] = state.get("step", 0) + 1
                masked = param in self.budgets
                if masked and (state["step"] - 1) % self.refresh_every == 0:
                    self._refresh(param, state)
                flat = param.view(-1)
                if not masked and "exp_avg" not in state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(flat), torch.zeros_like(flat)
                grad = param.grad.view(-1)[state["index"]] if masked else param.grad.view(-1)
                value = flat[state["index"]] if masked else flat
                state["exp_avg"].lerp_(grad, 1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = state["step"]
                denom = (state["exp_avg_sq"] / (1 - beta2**step)).sqrt_().add_(group["eps"])
                update = (state["exp_avg"] / (1 - beta1**step)) / denom
                value = value * (1 - group["lr"] * group["weight_decay"]) - group["lr"] * update
                if masked:
                    flat[state["index"]] = value
                else:
                    flat.copy_(value)
        return loss


ADAMW_KEYS = ("lr", "betas", "eps", "weight_decay")


class LIFT(Adapter):
    shardable = False  # FSDP2: masks and its optimizer keyed to whole weights
    def __init__(self, target_modules=None, lora_rank: int = 8, filter_rank: int = 8, select: str = "principal",
                 refresh_every: int = 100, train_also=None):
        super().__init__(target_modules, train_also)
        require(lora_rank >= 1, "adapter.lora_rank", lora_rank, "an integer >= 1")
        require(filter_rank >= 1, "adapter.filter_rank", filter_rank, "an integer >= 1")
        require(select in MASKS, "adapter.select", select, f"one of {', '.join(MASKS)}")
        require(refresh_every >= 1, "adapter.refresh_every", refresh_every, "an integer >= 1")
        self.lora_rank, self.filter_rank, self.select, self.refresh_every = lora_rank, filter_rank, select, refresh_every
        self.budgets: dict[str, int] = {}

    def adapt(self, model: nn.Module) -> nn.Module:
        model.requires_grad_(False)
        for name, module in targeted(model, self.target_modules):
            module.weight.requires_grad_(True)
            self.budgets[f"{name}.weight"] = min(sum(module.weight.shape) * self.lora_rank, module.weight.numel())
        return model

    def build_optimizer(self, model: nn.Module, optimizer: dict) -> torch.optim.Optimizer:
        require(str(optimizer.get("_target_", "")).endswith("adamw.build"), "optimizer", optimizer.get("_target_"),
                "adapter=lift supplies its masked AdamW: use optimizer=adamw (its lr, betas, eps, weight_decay)")
        params = dict(model.named_parameters())
        budgets = {params[name]: budget for name, budget in self.budgets.items()}
        hyper = {key: optimizer[key] for key in ADAMW_KEYS if key in optimizer}
        hyper["betas"] = tuple(hyper.get("betas", (0.9, 0.999)))
        return MaskedAdamW([p for p in model.parameters() if p.requires_grad], budgets, self.filter_rank,
                           refresh_every=self.refresh_every, select=self.select, **hyper)

    def trained_entries(self, model: nn.Module) -> dict[str, int]:
        return dict(self.budgets)
