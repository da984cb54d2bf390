"""Speed of a factorized layer against the dense one at the same shapes (forward + backward).

For each weight shape m×n (LLaMA-60M/130M/1B attention and MLP linears) and rank r = min(m, n)/4 and
/8, times one forward + backward of a batch of `tokens` rows through
- dense: y = x·Wᵀ (W m×n trained),
- factorized: y = B(A x) (`lrlab.parametrizations.base.Factorized`, what `lowrank` trains),
- SLTrain: y = x·(B·A + S)ᵀ with S on δ = 0.03 of the entries (`SparseLowRankLayer`: W formed, the
  values scatter-added, W formed again in backward),
and reports the median time of each and its ratio to dense. The input needs a gradient too, as inside
a network.

    OMP_NUM_THREADS=1 python scripts/bench_parametrizations.py [--tokens 2048] [--repeats 7] [--threads 1]
"""

import argparse
import statistics
import time

import torch
from torch import nn

from lrlab.parametrizations.base import Factorized
from lrlab.parametrizations.sltrain import SparseLowRankLayer

SHAPES = {"60M attn": (512, 512), "60M MLP": (1376, 512), "130M MLP": (2048, 768), "1B attn": (2048, 2048),
          "1B MLP": (5461, 2048)}


def seconds(layer: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median wall time of forward + backward (after two warm-up passes)."""
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        layer(x).sum().backward()
        if i >= 2:
            times.append(time.perf_counter() - start)
        layer.zero_grad(set_to_none=True)
        x.grad = None
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--density", type=float, default=0.03)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"forward + backward, {args.tokens} tokens, fp32, {args.threads} thread(s), median of {args.repeats}\n")
    print("| weight | m×n | r | dense ms | B(Ax) ms | ratio | SLTrain ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for label, (m, n) in SHAPES.items():
        x = torch.randn(args.tokens, n, requires_grad=True)
        dense = nn.Linear(n, m, bias=False)
        dense_ms = 1e3 * seconds(dense, x, args.repeats)
        for divisor in (4, 8):
            r = min(m, n) // divisor
            factor_ms = 1e3 * seconds(Factorized(dense, r), x, args.repeats)
            sparse_ms = 1e3 * seconds(SparseLowRankLayer(dense, r, 1.0, args.density), x, args.repeats)
            print(f"| {label} | {m}×{n} | {r} (min/{divisor}) | {dense_ms:.1f} | {factor_ms:.1f} | "
                  f"{factor_ms / dense_ms:.2f} | {sparse_ms:.1f} | {sparse_ms / dense_ms:.2f} |")


if __name__ == "__main__":
    main()
