"""IncreLoRA: ranks added during training where they matter most (Zhang et al., 2023, "IncreLoRA:
Incremental Parameter Allocation Method for Parameter-Efficient Fine-tuning", arXiv 2308.12043).

Adapter: y = W x + (alpha / target_r) P diag(lambda * m) Q x on each target linear (W frozen);
P (out x R) and Q (R x in) ~ N(0, 0.02), lambda = 0 (so training starts at the pre-trained
function), m in {0, 1}^R the active ranks; every module starts with `init_r` of them.
Importance (the reference code's module score): each step S = sum |dW * dL/d(dW)| / sqrt(numel)
with dW = (alpha / target_r) P diag(lambda * m) Q, smoothed as AdaLoRA's sensitivity:
I <- beta1 I + (1 - beta1) S, U <- beta2 U + (1 - beta2) |S - I|, score = I * U.
Growth: after `warmup` steps, every `interval` optimizer steps the `top_h` modules with the
largest score (among those below `max_r`) get one more active rank, until the total active rank
reaches `target_r` x modules (the target average). Penalty: `orth_reg_weight` times the mean over
factor matrices of ||Q_a Q_a^T - I||_F and ||P_a^T P_a - I||_F on the active ranks (AdaLoRA's).

Decisions:
- Preallocation: all R = `max_r` ranks exist from the start, so the optimizer's parameter set
  never changes; Adam keeps moments for the whole preallocated tensors (`optimizer_state_bytes`
  shows them). Inactive ranks get zero gradients (lambda * m = 0), so they stay at their init
  (with weight_decay 0) until activated; a new rank starts at lambda = 0: growth leaves the
  function unchanged.
- The scale alpha / target_r is constant (the reference divides by the current rank, which
  rescales the existing update every time a rank is added). No "advance learning" of reserve ranks.
- The summary's `trainable_params` counts the active ranks, sum r_active (in + out + 1), plus the
  other trainable parameters (`trained_entries`).
- dW is formed explicitly each forward (one out x in matrix per layer) so its gradient gives the
  score; the layer applies W + dW in a single linear.
Masks and smoothed scores are buffers, so checkpoints restore the allocation exactly.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrlab.adapters.base import Adapter, check_rank, merge_modules, off_identity, replace_linears, targeted
from lrlab.errors import require

INIT_STD = 0.02


class IncreLoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, init_r: int, max_r: int, scaling: float):
        super().__init__()
        self.base, self.scaling = base, scaling
        self.lora_A = nn.Parameter(torch.randn(max_r, base.in_features) * INIT_STD)
        self.lora_E = nn.Parameter(torch.zeros(max_r))
        self.lora_B = nn.Parameter(torch.randn(base.out_features, max_r) * INIT_STD)
        self.register_buffer("active", torch.arange(max_r) < init_r)
        self.register_buffer("sensitivity", torch.zeros(()))
        self.register_buffer("uncertainty", torch.zeros(()))
        self.score = torch.zeros(())

    @property
    def rank(self) -> int:
        return int(self.active.sum())

    def delta(self) -> torch.Tensor:
        return self.scaling * (self.lora_B * (self.lora_E * self.active)) @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta()
        if delta.requires_grad:
            delta.register_hook(lambda grad, d=delta.detach(): self._record(d, grad))
        return F.linear(x, self.base.weight + delta, self.base.bias)

    def _record(self, delta: torch.Tensor, grad: torch.Tensor) -> None:
        self.score = (delta * grad).abs().sum() / math.sqrt(delta.numel())

    def update_importance(self, beta1: float, beta2: float) -> None:
        score = self.score.to(self.sensitivity.device)
        self.sensitivity.mul_(beta1).add_((1 - beta1) * score)
        self.uncertainty.mul_(beta2).add_((1 - beta2) * (score - self.sensitivity).abs())

    def importance(self) -> float:
        return float(self.sensitivity * self.uncertainty)

    def add_rank(self) -> None:
        self.active[self.rank] = True

    def orthogonality(self) -> torch.Tensor:
        q, p = self.lora_A[self.active], self.lora_B[:, self.active]
        return off_identity(q @ q.T) + off_identity(p.T @ p)

    def active_entries(self, prefix: str) -> dict[str, int]:
        """Trainable entries of each factor (by parameter name under `prefix`): the active ranks'."""
        return {f"{prefix}.lora_A": self.rank * self.base.in_features, f"{prefix}.lora_E": self.rank,
                f"{prefix}.lora_B": self.base.out_features * self.rank}

    def merged(self) -> nn.Linear:
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged.weight.data = (self.base.weight + self.delta()).detach()
        if self.base.bias is not None:
            merged.bias.data = self.base.bias.data.clone()
        return merged


def layers(model: nn.Module) -> list[IncreLoRALinear]:
    return [m for m in model.modules() if isinstance(m, IncreLoRALinear)]


class IncreLoRA(Adapter):
    def __init__(self, target_modules=None, init_r: int = 1, target_r: int = 8, max_r: int = 16, alpha: float = 16.0,
                 interval: int = 10, top_h: int = 2, warmup: int = 0, beta1: float = 0.85, beta2: float = 0.85,
                 orth_reg_weight: float = 0.1, train_also=None):
        super().__init__(target_modules, train_also)
        require(1 <= init_r <= target_r, "adapter.init_r", init_r, f"an integer in [1, target_r={target_r}]")
        require(target_r <= max_r, "adapter.max_r", max_r, f"an integer >= target_r={target_r}")
        require(interval >= 1, "adapter.interval", interval, "an integer >= 1 (optimizer steps between growths)")
        require(top_h >= 1, "adapter.top_h", top_h, "an integer >= 1 (modules grown per round)")
        require(0 < beta1 < 1 and 0 < beta2 < 1, "adapter.beta1/beta2", (beta1, beta2), "fractions in (0, 1)")
        self.init_r, self.target_r, self.max_r, self.alpha = init_r, target_r, max_r, alpha
        self.interval, self.top_h, self.warmup, self.beta1, self.beta2 = interval, top_h, warmup, beta1, beta2
        self.orth_reg_weight = orth_reg_weight

    def adapt(self, model: nn.Module) -> nn.Module:
        check_rank(targeted(model, self.target_modules), self.max_r, "adapter.max_r")
        model.requires_grad_(False)
        replace_linears(model, self.target_modules,
                        lambda lin: IncreLoRALinear(lin, self.init_r, self.max_r, self.alpha / self.target_r))
        return model

    def after_step(self, task, step: int) -> None:
        """Smooth the scores; every `interval` steps grow the top modules, until the budget is met."""
        adapted = layers(task.model)
        if sum(layer.rank for layer in adapted) >= self.target_r * len(adapted):
            return
        for layer in adapted:
            layer.update_importance(self.beta1, self.beta2)
        if step > self.warmup and step % self.interval == 0:
            self.grow(adapted)

    def grow(self, adapted: list[IncreLoRALinear]) -> None:
        eligible = [layer for layer in adapted if layer.rank < layer.lora_E.numel()]
        count = min(self.top_h, self.target_r * len(adapted) - sum(layer.rank for layer in adapted))
        for layer in sorted(eligible, key=IncreLoRALinear.importance, reverse=True)[:count]:
            layer.add_rank()

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor:
        adapted = layers(task.model)
        return self.orth_reg_weight * (sum(layer.orthogonality() for layer in adapted) / (2 * len(adapted)))

    def trained_entries(self, model: nn.Module) -> dict[str, int]:
        return {name: count for module_name, layer in model.named_modules() if isinstance(layer, IncreLoRALinear)
                for name, count in layer.active_entries(module_name).items()}

    def export(self, model: nn.Module) -> nn.Module:
        return merge_modules(model, IncreLoRALinear)
