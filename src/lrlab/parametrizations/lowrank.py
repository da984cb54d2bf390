"""Low-rank weights W = (α/r)·B·A with weight refactorization and momentum reset (Glentis et al. 2025,
"Scalable Parameter and Memory Efficient Pretraining for LLM: Recent Algorithmic Advances and
Benchmarking", arXiv 2505.22922; official code github.com/OptimAI-Lab/Memory_Efficient_Pretraining).

Every targeted layer becomes B (m×r) · A (r×n) times α/r; the forward is (α/r)·B(A x) (the dense
W is never formed). Init as the official `LoRaFaLinear`: both factors kaiming-uniform (`init:
kaiming`); `init: svd` starts from the best rank-r fit of the layer's initial weight instead.

`refactorize_every` = n_r > 0: after every n_r-th step, SVD(B·A) = UΣVᵀ and B ← U√Σ, A ← √Σ·Vᵀ
(the function is unchanged; `Factorized.rebalance`), then — as the official loop, which rebuilds the
optimizer and a `cosine_quick_recovery` scheduler after `merge_and_reinit` — every optimizer moment
and step count is cleared (`reset_optimizer`), and the lr re-warms over `rewarm_steps` = n steps:
the j-th step after the reset (j = 0 … n−1) runs at (s + (1−s)·j/(n−1))× its scheduled lr, s =
`rewarm_start` = 0.001, i.e. 0.001× at the first step after the reset and 1× at step n−1 (a window
longer than n_r is cut short by the next reset).

Where this differs from the official code (read in `torchrun_main_DDP.py` and
`peft_pretraining/training_utils.py`): (1) the released loop refactorizes only its SLTrain model
(`SpLoRaLinear.merge_and_reinit`, which is B·A's SVD as here); the paper applies it to the plain
low-rank model, which is what `lowrank` does (and `sltrain` offers the same option). (2) The official
recovery multiplies the target lr of step (reset + n); here the scale multiplies each step's own
scheduled lr (the protocol's `lr_scale`), which differs by the schedule's change over n steps. (3) The
official scheduler is rebuilt with `last_epoch=update_step`, and torch's LambdaLR then steps once on
construction, so its first step after a reset already runs at the j = 1 value (≈0.11×); here the first
step runs at 0.001× as the scheduler's formula intends. (4) The SVD is taken from the QR factors of B
and A (same U, Σ, V, far cheaper than an SVD of the m×n product).
"""

from torch import nn

from lrlab.errors import require
from lrlab.parametrizations.base import DEFAULT_EXCLUDE, Factorized, Parametrization, check_rank, \
    reset_optimizer_state

INITS = ("kaiming", "svd")


class LowRank(Parametrization):
    def __init__(self, rank: int = 128, alpha: float = 32.0, init: str = "kaiming", refactorize_every: int = 0,
                 reset_optimizer: bool = True, rewarm_steps: int = 10, rewarm_start: float = 1e-3,
                 target_modules=None, exclude=DEFAULT_EXCLUDE):
        super().__init__(target_modules, exclude)
        require(init in INITS, "parametrization.init", init, f"one of {', '.join(INITS)}")
        require(isinstance(refactorize_every, int) and refactorize_every >= 0, "parametrization.refactorize_every",
                refactorize_every, "an integer >= 0 (0: never)")
        require(isinstance(rewarm_steps, int) and rewarm_steps >= 0, "parametrization.rewarm_steps", rewarm_steps,
                "an integer >= 0")
        require(0 < rewarm_start <= 1, "parametrization.rewarm_start", rewarm_start, "a number in (0, 1]")
        self.rank, self.alpha, self.init = rank, float(alpha), init
        self.refactorize_every, self.reset_optimizer = refactorize_every, bool(reset_optimizer)
        self.rewarm_steps, self.rewarm_start = rewarm_steps, float(rewarm_start)

    def checked(self, targets):
        check_rank(targets, self.rank)
        return targets

    def rewrite(self, name: str, layer: nn.Module) -> nn.Module:
        return Factorized(layer, self.rank, self.alpha / self.rank, self.init)

    def refactorizes_after(self, step: int) -> bool:
        return self.refactorize_every > 0 and (step + 1) % self.refactorize_every == 0

    def after_step(self, task, step: int) -> None:
        if not self.refactorizes_after(step):
            return
        for _, layer in self.layers(task.model, Factorized):
            layer.rebalance()
        if self.reset_optimizer:
            reset_optimizer_state(task)

    def lr_scale(self, step: int) -> float:
        if not (self.reset_optimizer and self.rewarm_steps and step >= self.refactorize_every > 0):
            return 1.0
        since = step % self.refactorize_every
        if since >= self.rewarm_steps:
            return 1.0
        progress = since / (self.rewarm_steps - 1) if self.rewarm_steps > 1 else 1.0
        return self.rewarm_start + (1.0 - self.rewarm_start) * progress
