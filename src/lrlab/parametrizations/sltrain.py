"""SLTrain: sparse plus low-rank weights (Han et al., NeurIPS 2024, "SLTrain: a sparse plus low-rank
approach for parameter and memory efficient pretraining", arXiv 2406.02214; official code
github.com/andyjm3/SLTrain, `splora/splora_linear.py`, `sparse-lora/sparse_linear.cpp`).

W = (α/r)·B·A + S. A (r×n) kaiming-uniform, B (m×r) zeros, so W = S at the start; S has a random
support of ⌊δ·m·n⌋ entries (δ = `density`, the official `sp_ratio`), drawn once (`randperm`, sorted)
and never moved, with values U(±1/√n); only the values train. The support is a buffer of flat indices,
int32 when m·n < 2³¹ (the official code keeps int64: half the bytes here), so it is checkpointed and
survives resume unchanged.

The forward is the official kernel's: W is formed (B·(α/r·A), then the values scatter-added at their
indices), y = x·Wᵀ + b, and only x and the factors are saved — backward forms W again, so no m×n
tensor is kept between forward and backward (`SparsePlusLowRank`). A convolution's kernel takes the
same matrix (autograd path). The layer keeps the original layer's bias (the official module draws a
new one). Hyperparameters of the official scripts (rank / α / δ / lr 0.003): 60M 128/32/0.03,
130M 256/16/0.03, 350M 256/16/0.03, 1B 512/8/0.03.

`refactorize_every` > 0 adds the pretraining benchmark's weight refactorization + momentum reset +
lr re-warm (arXiv 2505.22922, whose code implements it for this model: `SpLoRaLinear.merge_and_reinit`)
to the low-rank part; see `lrlab.parametrizations.lowrank`. Off by default, as in SLTrain.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrlab.errors import require
from lrlab.parametrizations.base import DEFAULT_EXCLUDE, Factorized, MatrixLayer
from lrlab.parametrizations.lowrank import LowRank

INT32_LIMIT = 2**31 - 1


def sparse_plus_low_rank(b: torch.Tensor, a: torch.Tensor, values: torch.Tensor, index: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """scale·B·A with `values` added at the flat `index` positions."""
    low = b @ a
    if scale != 1.0:
        low = low * scale
    return low.flatten().index_add(0, index.long(), values.to(low.dtype)).view_as(low)


class SparsePlusLowRank(torch.autograd.Function):
    """y = x·Wᵀ + b for W = scale·B·A + S; saves x and the factors, rebuilds W in backward."""

    @staticmethod
    def forward(ctx, x, b, a, values, index, bias, scale):
        ctx.save_for_backward(x, b, a, values, index)
        ctx.scale, ctx.has_bias = scale, bias is not None
        return F.linear(x, sparse_plus_low_rank(b, a, values, index, scale), bias)

    @staticmethod
    def backward(ctx, grad):
        x, b, a, values, index = ctx.saved_tensors
        scale = ctx.scale
        grad_2d, x_2d = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_2d @ sparse_plus_low_rank(b, a, values, index, scale).to(grad.dtype)).view_as(x)
        grad_w = grad_2d.T @ x_2d.to(grad_2d.dtype)
        grad_b = grad_w @ a.T.to(grad_w.dtype) * scale if ctx.needs_input_grad[1] else None
        grad_a = b.T.to(grad_w.dtype) @ grad_w * scale if ctx.needs_input_grad[2] else None
        grad_values = grad_w.flatten()[index.long()] if ctx.needs_input_grad[3] else None
        grad_bias = grad_2d.sum(0) if ctx.has_bias and ctx.needs_input_grad[5] else None
        return grad_x, grad_b, grad_a, grad_values, None, grad_bias, None


class SparseLowRankLayer(Factorized):
    def __init__(self, layer: nn.Module, rank: int, scale: float, density: float):
        super().__init__(layer, rank, scale, init="zeros_b")
        m, n = self.out_features, self.in_features
        count = int(density * m * n)
        require(count >= 1, "parametrization.density", density, f"keeps no entry of a {m}x{n} weight")
        dtype = torch.int32 if m * n <= INT32_LIMIT else torch.int64
        index = torch.randperm(m * n, device=self.like["device"])[:count].sort().values
        self.register_buffer("sparse_index", index.to(dtype))
        bound = 1.0 / math.sqrt(n)
        self.sparse_values = nn.Parameter(torch.empty(count, **self.like).uniform_(-bound, bound))

    def matrix(self) -> torch.Tensor:
        return sparse_plus_low_rank(self.B, self.A, self.sparse_values, self.sparse_index, self.scale)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return SparsePlusLowRank.apply(x, self.B, self.A, self.sparse_values, self.sparse_index, self.bias,
                                       self.scale)

    def conv2d(self, x: torch.Tensor) -> torch.Tensor:
        return MatrixLayer.conv2d(self, x)


class SLTrain(LowRank):
    def __init__(self, rank: int = 128, alpha: float = 32.0, density: float = 0.03, refactorize_every: int = 0,
                 reset_optimizer: bool = True, rewarm_steps: int = 10, rewarm_start: float = 1e-3,
                 target_modules=None, exclude=DEFAULT_EXCLUDE):
        super().__init__(rank, alpha, "kaiming", refactorize_every, reset_optimizer, rewarm_steps, rewarm_start,
                         target_modules, exclude)
        require(0 < density < 1, "parametrization.density", density, "a fraction in (0, 1)")
        self.density = float(density)

    def rewrite(self, name: str, layer: nn.Module) -> nn.Module:
        return SparseLowRankLayer(layer, self.rank, self.alpha / self.rank, self.density)
