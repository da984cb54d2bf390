"""IncreLoRA: ranks added during training where they matter most (Zhang et al., 2023, "IncreLoRA:
Incremental Parameter Allocation Method for Parameter-Efficient Fine-tuning", arXiv 2308.12043).
Official code read: FeiyuZhang98/IncreLoRA at 51a2d73, `loralib/loralib/increlora.py`
(`SVDLinear`, `RankAllocator`), `NLU/examples/text-classification/run_glue.py` (defaults:
`advance_learn` true, `incre_rank_num` None) and `NLU/scripts/rank=8/run_*.sh`.

Adapter: y = W x + s P diag(λ_eff) Q x on each target linear (W frozen), λ_eff = λ ⊙ m plus
1e-5 on the reserve ranks (advance learning, below); P (out x R) and Q (R x in) ~ N(0, 0.02),
λ = 0 (training starts at the pre-trained function, up to the reserve's 1e-5 term), m in
{0, 1}^R the active ranks; every module starts with `init_r` of them. The scale s (`scale`):
- `current_rank` (official `scaling / (ranknum + 1e-5)`): α / (active ranks + 1e-5), so it
  changes whenever the module grows;
- `target_rank` (the earlier rule): the constant α / `target_r`.
Importance (the official module score): each step S = sum |dW * dL/d(dW)| / sqrt(numel) with
dW = s P diag(λ_eff) Q, smoothed as AdaLoRA's sensitivity: I <- beta1 I + (1 - beta1) S,
U <- beta2 U + (1 - beta2) |S - I|, score = I * U.
Growth: after `warmup` steps, every `interval` optimizer steps the `top_h` modules with the
largest score (among those below `max_r`) each get `ranks_per_growth` more active ranks (null:
the official table {2: 1, 4: 2, 6: 3, 8: 4}[target_r], i.e. target_r // 2), until the total
active rank reaches `target_r` x modules; the last round adds only what the budget has left (the
official one may overshoot the target). Penalty: `orth_reg_weight` times the mean over factor
matrices of ||Q_a Q_a^T - I||_F and ||P_a^T P_a - I||_F on the active ranks (AdaLoRA's form; the
official averages over its per-rank parameter chunks, reserve ones included).

Advance learning (`advance_learning`, official `add_reserve_param(add_r, advance_learn=True)`):
each module holds `ranks_per_growth` reserve ranks beyond its active ones whose P and Q rows
train while their λ stays fixed at 1e-5 (so they contribute 1e-5·s·p qᵀ and get gradients);
when a module grows, its reserve ranks become active with λ starting at 1e-5 and trained, and
the next ranks become the reserve. Once the budget is met the reserve λ is set to 0 (official:
`lora_E[-add_r:].fill_(0.)` when `total_rank == target_rank`). Without it (the earlier rule) a
new rank starts at λ = 0 from its initial P and Q, which did not move while inactive.

Defaults are the official GLUE ones (rank=8 scripts, SST-2/MNLI): `init_r` 1, `target_r` 8,
`warmup` 1000, `interval` 1000, α 16, β 0.85/0.85, orthogonality 0.1, advance learning, scale
α/current rank, 4 ranks per growth; `top_h` is per task there (6 for SST-2, 18 for MNLI).

Decisions:
- Preallocation: all R = `max_r` ranks exist from the start, so the optimizer's parameter set
  never changes; Adam keeps moments for the whole preallocated tensors (`optimizer_state_bytes`
  shows them). Ranks that are neither active nor reserve get zero gradients (λ_eff = 0), so they
  stay at their init (with weight_decay 0) until they become reserve or active. The official
  code appends new parameters and an optimizer group with its own lr warm-up (`multi_lr`);
  here every rank follows the run's one schedule.
- The summary's `trainable_params` counts the active ranks, sum r_active (in + out + 1), and
  the reserve ranks' P and Q rows (in + out each), plus the other trainable parameters
  (`trained_entries`).
- dW is formed explicitly each forward (one out x in matrix per layer) so its gradient gives the
  score; the layer applies W + dW in a single linear.
Masks and smoothed scores are buffers, so checkpoints restore the allocation exactly.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrlab.adapters.base import Adapter, check_rank, merge_modules, off_identity, replace_linears, targeted
from lrlab.distributed import mean_over_ranks, world_size
from lrlab.errors import require

INIT_STD = 0.02
ADVANCE_LAMBDA = 1e-5  # the fixed λ of reserve ranks (official `e[0][0] = 1e-5`)
SCALES = ("current_rank", "target_rank")


class IncreLoRALinear(nn.Module):
    """Active ranks are the prefix [0, rank); with advance learning the next `reserve_r` are the reserve."""

    def __init__(self, base: nn.Linear, init_r: int, max_r: int, alpha: float, scale: str, target_r: int,
                 reserve_r: int):
        super().__init__()
        self.base, self.alpha, self.scale, self.target_r = base, alpha, scale, target_r
        self.lora_A = nn.Parameter(torch.randn(max_r, base.in_features) * INIT_STD)
        self.lora_E = nn.Parameter(torch.zeros(max_r))
        self.lora_B = nn.Parameter(torch.randn(base.out_features, max_r) * INIT_STD)
        self.register_buffer("active", torch.arange(max_r) < init_r)
        self.rank = init_r  # active ranks, kept on the host (reading `active` would wait for the device)
        self.register_buffer("reserve", torch.zeros(max_r, dtype=torch.bool))
        self.register_buffer("sensitivity", torch.zeros(()))
        self.register_buffer("uncertainty", torch.zeros(()))
        self.score = torch.zeros(())
        self.set_reserve(reserve_r)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.rank, self.reserve_rows = int(self.active.sum()), int(self.reserve.sum())

    def scaling(self) -> torch.Tensor | float:
        """α / (active ranks + 1e-5) (`current_rank`, official) or α / target_r (`target_rank`)."""
        if self.scale == "current_rank":
            return self.alpha / (self.active.sum() + 1e-5)
        return self.alpha / self.target_r

    def effective_lambda(self) -> torch.Tensor:
        """λ on the active ranks, the fixed 1e-5 on the reserve ones, 0 elsewhere."""
        return self.lora_E * self.active + ADVANCE_LAMBDA * self.reserve

    def delta(self) -> torch.Tensor:
        return self.scaling() * (self.lora_B * self.effective_lambda()) @ self.lora_A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = self.delta()
        if delta.requires_grad:
            delta.register_hook(lambda grad, d=delta.detach(): self._record(d, grad))
        return F.linear(x, self.base.weight + delta, self.base.bias)

    def _record(self, delta: torch.Tensor, grad: torch.Tensor) -> None:
        weighted = delta * grad
        if world_size() > 1:
            # the global batch's dW ⊙ ∂L/∂dW is the ranks' mean (their gradients average): one
            # all-reduce of an out × in matrix per layer and step, so every rank grows the same layers
            weighted = mean_over_ranks(weighted)
        self.score = weighted.abs().sum() / math.sqrt(weighted.numel())

    def update_importance(self, beta1: float, beta2: float) -> None:
        score = self.score.to(self.sensitivity.device)
        self.sensitivity.mul_(beta1).add_((1 - beta1) * score)
        self.uncertainty.mul_(beta2).add_((1 - beta2) * (score - self.sensitivity).abs())

    def importance(self) -> torch.Tensor:
        return self.sensitivity * self.uncertainty

    @torch.no_grad()
    def add_ranks(self, count: int, reserve_r: int) -> None:
        """Activate the next `count` ranks (reserve ones keep training from λ = 1e-5, the others
        start at λ = 0) and make the `reserve_r` after them the reserve."""
        new = slice(self.rank, self.rank + count)
        self.lora_E[new] = torch.where(self.reserve[new], ADVANCE_LAMBDA, self.lora_E[new])
        self.active[new] = True
        self.rank += count
        self.set_reserve(reserve_r)

    def set_reserve(self, reserve_r: int) -> None:
        self.reserve.zero_()
        self.reserve[self.rank:self.rank + reserve_r] = True
        self.reserve_rows = min(reserve_r, self.lora_E.numel() - self.rank)

    def orthogonality(self) -> torch.Tensor:
        q, p = self.lora_A[:self.rank], self.lora_B[:, :self.rank]  # the active ranks are the prefix
        return off_identity(q @ q.T) + off_identity(p.T @ p)

    def active_entries(self, prefix: str) -> dict[str, int]:
        """Trainable entries of each factor (by parameter name under `prefix`): the active ranks',
        and the P and Q rows of the reserve ranks."""
        rows = self.rank + self.reserve_rows
        return {f"{prefix}.lora_A": rows * self.base.in_features, f"{prefix}.lora_E": self.rank,
                f"{prefix}.lora_B": self.base.out_features * rows}

    def merged(self) -> nn.Linear:
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged.weight.data = (self.base.weight + self.delta()).detach()
        if self.base.bias is not None:
            merged.bias.data = self.base.bias.data.clone()
        return merged


def layers(model: nn.Module) -> list[IncreLoRALinear]:
    return [m for m in model.modules() if isinstance(m, IncreLoRALinear)]


class IncreLoRA(Adapter):
    shardable = False  # FSDP2: rank masks and scores over whole weights
    def __init__(self, target_modules=None, init_r: int = 1, target_r: int = 8, max_r: int = 16, alpha: float = 16.0,
                 interval: int = 1000, top_h: int = 6, warmup: int = 1000, beta1: float = 0.85, beta2: float = 0.85,
                 orth_reg_weight: float = 0.1, advance_learning: bool = True, scale: str = "current_rank",
                 ranks_per_growth: int | None = None, train_also=None):
        super().__init__(target_modules, train_also)
        require(1 <= init_r <= target_r, "adapter.init_r", init_r, f"an integer in [1, target_r={target_r}]")
        require(target_r <= max_r, "adapter.max_r", max_r, f"an integer >= target_r={target_r}")
        require(interval >= 1, "adapter.interval", interval, "an integer >= 1 (optimizer steps between growths)")
        require(top_h >= 1, "adapter.top_h", top_h, "an integer >= 1 (modules grown per round)")
        require(0 < beta1 < 1 and 0 < beta2 < 1, "adapter.beta1/beta2", (beta1, beta2), "fractions in (0, 1)")
        require(scale in SCALES, "adapter.scale", scale, " or ".join(SCALES))
        require(ranks_per_growth is None or ranks_per_growth >= 1, "adapter.ranks_per_growth", ranks_per_growth,
                "null (target_r // 2, the official table) or an integer >= 1")
        self.init_r, self.target_r, self.max_r, self.alpha = init_r, target_r, max_r, alpha
        self.interval, self.top_h, self.warmup, self.beta1, self.beta2 = interval, top_h, warmup, beta1, beta2
        self.orth_reg_weight, self.advance_learning, self.scale = orth_reg_weight, bool(advance_learning), scale
        self.ranks_per_growth = ranks_per_growth if ranks_per_growth is not None else max(1, target_r // 2)

    @property
    def reserve_r(self) -> int:
        return self.ranks_per_growth if self.advance_learning else 0

    def adapt(self, model: nn.Module) -> nn.Module:
        check_rank(targeted(model, self.target_modules), self.max_r, "adapter.max_r")
        model.requires_grad_(False)
        replace_linears(model, self.target_modules,
                        lambda lin: IncreLoRALinear(lin, self.init_r, self.max_r, self.alpha, self.scale,
                                                    self.target_r, self.reserve_r))
        return model

    def budget_left(self, adapted: list[IncreLoRALinear]) -> int:
        return self.target_r * len(adapted) - sum(layer.rank for layer in adapted)

    def after_step(self, task, step: int) -> None:
        """Smooth the scores; every `interval` steps grow the top modules, until the budget is met."""
        adapted = layers(task.model)
        if self.budget_left(adapted) <= 0:
            return
        for layer in adapted:
            layer.update_importance(self.beta1, self.beta2)
        if step > self.warmup and step % self.interval == 0:
            self.grow(adapted)

    def grow(self, adapted: list[IncreLoRALinear]) -> None:
        eligible = [layer for layer in adapted if layer.rank < layer.lora_E.numel()]
        if not eligible:
            return
        scores = torch.stack([layer.importance() for layer in eligible]).tolist()  # one host read per growth
        ranked = [layer for _, layer in sorted(zip(scores, eligible), key=lambda pair: pair[0], reverse=True)]
        for layer in ranked[:self.top_h]:
            count = min(self.ranks_per_growth, layer.lora_E.numel() - layer.rank, self.budget_left(adapted))
            if count > 0:
                layer.add_ranks(count, self.reserve_r)
        if self.budget_left(adapted) <= 0:
            for layer in adapted:
                layer.set_reserve(0)

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor:
        adapted = layers(task.model)
        return self.orth_reg_weight * (sum(layer.orthogonality() for layer in adapted) / (2 * len(adapted)))

    def trained_entries(self, model: nn.Module) -> dict[str, int]:
        return {name: count for module_name, layer in model.named_modules() if isinstance(layer, IncreLoRALinear)
                for name, count in layer.active_entries(module_name).items()}

    def export(self, model: nn.Module) -> nn.Module:
        return merge_modules(model, IncreLoRALinear)
