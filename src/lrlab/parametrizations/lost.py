"""LOST: low-rank and channel-wise sparse weights from an SVD split (Li et al. 2025, "LOST: Low-rank and
Sparse Pre-training for Large Language Models", arXiv 2508.02668).

At the start, the layer's initial weight W₀ = UΣVᵀ is split: its top-r components become the
low-rank factors B = U_r√Σ_r, A = √Σ_r·V_rᵀ, and the complement R = W₀ − B·A (the remaining singular
values) gives the channel-wise sparse part: the ⌈γ·n⌉ input channels (columns of R) with the largest
ℓ2 norm are kept whole (γ = `channel_fraction`), the others dropped. W = B·A + S with S non-zero only
in those columns; the column indices are a buffer, fixed for the run (checkpointed). The forward
never forms W: y = B(A x) + S·x[cols] + b. B, A and the kept columns train.

What was read: the paper's abstract and summaries of its method (SVD of W, dominant components →
low-rank, remaining singular values → channel-wise sparse complement). The official repository
(github.com/JiaxiLi1/LOST-Low-rank-and-Sparse-Training-for-Large-Language-Models) and the method
section could not be read here, so these choices are ours and exposed as options: channels are
input columns (for a convolution, columns of the out × in·kh·kw matrix), chosen by the norm of
R's columns, γ = 0.03 by default (SLTrain's budget of entries); no activation between A and B (a
summary mentions a non-linearity inside the factorization, which would make W a function rather than
a matrix: not implemented); no scale on B·A.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from lrlab.errors import require
from lrlab.parametrizations.base import DEFAULT_EXCLUDE, Factorized, MatrixLayer
from lrlab.parametrizations.lowrank import LowRank


class ChannelSparseLowRankLayer(Factorized):
    def __init__(self, layer: nn.Module, rank: int, channel_fraction: float):
        super().__init__(layer, rank, 1.0, init="svd")
        m, n = self.out_features, self.in_features
        residual = layer.weight.detach().reshape(m, n).float() - self.B.detach().float() @ self.A.detach().float()
        count = min(n, max(1, math.ceil(channel_fraction * n)))
        columns = residual.norm(dim=0).topk(count).indices.sort().values
        self.register_buffer("sparse_columns", columns)
        self.sparse_values = nn.Parameter(residual[:, columns].to(**self.like))

    def matrix(self) -> torch.Tensor:
        return (self.B @ self.A).index_add(1, self.sparse_columns, self.sparse_values)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return super().linear(x) + F.linear(x.index_select(-1, self.sparse_columns), self.sparse_values)

    def conv2d(self, x: torch.Tensor) -> torch.Tensor:
        return MatrixLayer.conv2d(self, x)


class LOST(LowRank):
    shardable = False  # FSDP2: transposed (non-contiguous) factors FSDP2 cannot shard
    def __init__(self, rank: int = 128, channel_fraction: float = 0.03, refactorize_every: int = 0,
                 reset_optimizer: bool = True, rewarm_steps: int = 10, rewarm_start: float = 1e-3,
                 target_modules=None, exclude=DEFAULT_EXCLUDE):
        # alpha = rank: no scale on B·A
        super().__init__(rank, float(rank), "svd", refactorize_every, reset_optimizer, rewarm_steps, rewarm_start,
                         target_modules, exclude)
        require(0 < channel_fraction <= 1, "parametrization.channel_fraction", channel_fraction,
                "a fraction in (0, 1]")
        self.channel_fraction = float(channel_fraction)

    def rewrite(self, name: str, layer: nn.Module) -> nn.Module:
        return ChannelSparseLowRankLayer(layer, self.rank, self.channel_fraction)
