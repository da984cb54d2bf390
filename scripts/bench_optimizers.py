"""Low-rank optimizer benchmark: refresh time, amortised step time, state bytes — in one run.

1. Projection refresh per basis against galore-torch's SVD on GaLore-shaped gradients
   (512×1376 r128, 1024×2736 r256, 2048×5461 r512), with the subspace error against it.
2. Amortised step time over T steps (one refresh each T) on llama_20m's weights and fixed
   random gradients: torch AdamW (foreach), galore-torch, fira, pytorch-optimizer's GaLore, ours.
3. Optimizer-state bytes measured from the state tensors against the analytic formula.
4. bf16 weights: the step of the unprojected groups with fp32 moments (ours) against the same
   fused kernel on bf16 moments (torch AdamW, fused), on llama_20m's weights in bf16.

    python scripts/bench_optimizers.py            # full: T=200, 3 repeats
    python scripts/bench_optimizers.py --quick    # T=50, 1 repeat, two smaller shapes
    python scripts/bench_optimizers.py --only bf16 --steps 50
"""

import argparse
import statistics
import time
import warnings

import torch

from lrlab.models.llama import build as build_llama
from lrlab.optim import frugal, lowrank_adam, projector
from lrlab.optim.routing import decay_groups, split_params, trainable
from lrlab.optim.state import state_bytes

SHAPES = [((512, 1376), 128), ((1024, 2736), 256), ((2048, 5461), 512)]
BASES = {"svd": ("svd", "matmul"), "eigh": ("eigh", "matmul"), "randomized": ("randomized", "matmul"),
         "dct": ("dct", "matmul"), "dct (makhoul)": ("dct", "makhoul"), "random": ("random", "matmul")}


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def subspace(left, right):
    return left @ left.T if left is not None else right.T @ right


def bench_refresh(shapes, repeats: int) -> None:
    from galore_torch.galore_projector import GaLoreProjector

    print("\n## 1. Projection refresh (median seconds; ratio = galore-torch SVD / ours)")
    print(f"| shape | rank | galore-torch svd | " + " | ".join(BASES) + " | subspace err (svd, eigh) |")
    print("|---|---|---|" + "---|" * len(BASES) + "---|")
    for shape, rank in shapes:
        grad = torch.randn(*shape)
        reference = GaLoreProjector(rank, proj_type="std")
        side = "left" if shape[0] < shape[1] else "right"
        ref_time = timed(lambda: reference.get_orthogonal_matrix(grad, rank, side), repeats)
        ref_basis = reference.get_orthogonal_matrix(grad, rank, side)
        ref_proj = ref_basis @ ref_basis.T if side == "left" else ref_basis.T @ ref_basis
        cells, errors = [], []
        for basis, variant in BASES.values():
            ours = timed(lambda: projector.refresh(grad, rank, "std", basis, dct_variant=variant), 5 * repeats)
            cells.append(f"{ours:.4f} ({ref_time / ours:.0f}×)")
            if basis in ("svd", "eigh"):
                mine = subspace(*projector.matrices(projector.refresh(grad, rank, "std", basis), grad.shape))
                errors.append(f"{(mine - ref_proj).abs().max():.1e}")
        print(f"| {shape[0]}×{shape[1]} | {rank} | {ref_time:.4f} | " + " | ".join(cells) + f" | {', '.join(errors)} |")


def llama_20m() -> torch.nn.Module:
    return build_llama(vocab_size=32000, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                       num_attention_heads=4)


def optimizers(model, rank: int, gap: int) -> dict:
    from fira import FiraAdamW
    from galore_torch import GaLoreAdamW
    from pytorch_optimizer import GaLore

    projected, regular = split_params(model, ("attn", "mlp"))
    lowrank = [p for _, p in projected]
    dense = [p for _, p in regular]
    group = {"rank": rank, "update_proj_gap": gap, "proj_type": "std"}
    return {
        "torch AdamW (foreach)": lambda: torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True),
        "galore-torch": lambda: GaLoreAdamW([{"params": lowrank, **group, "scale": 0.25}, {"params": dense}], lr=1e-3),
        "fira": lambda: FiraAdamW([{"params": lowrank, **group, "alpha": 0.25}, {"params": dense}], lr=1e-3),
        "pytorch-optimizer GaLore": lambda: GaLore(
            [{"params": lowrank, "rank": rank, "update_proj_gap": gap, "scale": 0.25, "projection_type": "std"},
             {"params": dense}], lr=1e-3),
        "lrlab GaLore (svd)": lambda: lowrank_adam.build(model, lr=1e-3, rank=rank, update_proj_gap=gap),
        "lrlab Fira": lambda: lowrank_adam.build(model, lr=1e-3, rank=rank, update_proj_gap=gap, residual="fira"),
        "lrlab GaLore (eigh)": lambda: lowrank_adam.build(model, lr=1e-3, rank=rank, update_proj_gap=gap, basis="eigh"),
        "lrlab DCT": lambda: lowrank_adam.build(model, lr=1e-3, rank=rank, update_proj_gap=gap, basis="dct"),
        "lrlab FRUGAL (blocks)": lambda: frugal.build(model, lr=1e-3, update_proj_gap=gap),
    }


def bench_steps(gap: int, rank: int, rounds: int = 8) -> None:
    print(f"\n## 2. Amortised step time, llama_20m weights, rank {rank}, T={gap} ({gap} steps incl. one refresh, "
          f"timed round-robin in {rounds} chunks)")
    print("| optimizer | ms/step | vs galore-torch | vs torch AdamW | state MiB | formula MiB |")
    print("|---|---|---|---|---|---|")
    torch.manual_seed(0)
    model = llama_20m()
    grads = {p: torch.randn_like(p) * 1e-3 for p in model.parameters()}
    built = {}
    for name, make in optimizers(model, rank, gap).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built[name] = make()
        for p, g in grads.items():
            p.grad = g
        for _ in range(gap):  # warm-up: state allocated, first refresh done
            built[name].step()
    # Round-robin in chunks, so that machine noise falls on every optimizer alike; each still
    # takes `gap` timed steps, one of which refreshes its projection.
    elapsed = dict.fromkeys(built, 0.0)
    chunk = max(1, gap // rounds)
    for _ in range(rounds):
        for name, opt in built.items():
            start = time.perf_counter()
            for _ in range(chunk):
                opt.step()
            elapsed[name] += time.perf_counter() - start
    results = {name: (elapsed[name] / (chunk * rounds) * 1000, state_bytes(opt)[0] / 2**20)
               for name, opt in built.items()}
    projected, regular = split_params(model, ("attn", "mlp"))
    dense_bytes = sum(2 * p.numel() * 4 for _, p in regular)
    formula = {"svd": sum(projector.state_bytes_formula(p.shape, rank, "std", "svd") for _, p in projected),
               "dct": sum(projector.state_bytes_formula(p.shape, rank, "std", "dct") for _, p in projected)}
    adam_formula = sum(2 * p.numel() * 4 + 4 for p in model.parameters()) / 2**20
    base, adam = results["galore-torch"][0], results["torch AdamW (foreach)"][0]
    for name, (ms, mib) in results.items():
        if "FRUGAL" in name:  # the moments of the state-full blocks only
            expected = "–"
        elif name.startswith("lrlab"):
            expected = (formula["dct" if "DCT" in name else "svd"] + dense_bytes) / 2**20
            expected = f"{expected:.2f}"
        elif name.startswith("torch"):
            expected = f"{adam_formula:.2f}"
        else:
            expected = "–"
        print(f"| {name} | {ms:.1f} | {ms / base:.2f} | {ms / adam:.2f} | {mib:.2f} | {expected} |")


def bench_bf16_dense(steps: int, rounds: int = 5) -> None:
    """The cost of fp32 moments for bf16 weights in the unprojected groups: our dense step (an fp32
    copy of each weight and gradient through the fused kernel, rounded back once) against the same
    kernel on bf16 moments, which is what the dense step ran before."""
    print(f"\n## 4. Unprojected groups, bf16 weights (llama_20m, all {steps} steps dense Adam, "
          f"median of {rounds} round-robin rounds)")
    print("| optimizer | moments | ms/step | vs bf16 moments | state MiB |")
    print("|---|---|---|---|---|")
    torch.manual_seed(0)
    model = llama_20m().to(torch.bfloat16)
    grads = {p: (torch.randn_like(p, dtype=torch.float32) * 1e-3).to(torch.bfloat16) for p in model.parameters()}
    built = {
        "torch AdamW (fused)": (lambda: torch.optim.AdamW(decay_groups(trainable(model), 0.0), lr=1e-3, eps=1e-6,
                                                          fused=True), "bf16"),
        "lrlab dense step": (lambda: lowrank_adam.LowRankAdamW(decay_groups(trainable(model), 0.0), lr=1e-3), "fp32"),
    }
    optimizers_ = {name: make() for name, (make, _) in built.items()}
    for p, g in grads.items():
        p.grad = g
    for opt in optimizers_.values():
        opt.step()  # state allocated
    times = {name: [] for name in optimizers_}
    for _ in range(rounds):
        for name, opt in optimizers_.items():
            times[name].append(timed(lambda: [opt.step() for _ in range(steps)], 1) / steps * 1000)
    base = statistics.median(times["torch AdamW (fused)"])
    for name, opt in optimizers_.items():
        ms = statistics.median(times[name])
        print(f"| {name} | {built[name][1]} | {ms:.2f} | {ms / base:.2f} | {state_bytes(opt)[0] / 2**20:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["refresh", "steps", "bf16"], default=None)
    parser.add_argument("--steps", type=int, default=50, help="bf16 section: steps per timed round")
    parser.add_argument("--gap", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None, help="refresh timings: median of 5x this many")
    args = parser.parse_args()
    gap = args.gap or (50 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 3)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    if args.only in (None, "refresh"):
        bench_refresh(SHAPES[:2] if args.quick else SHAPES, repeats)
    if args.only in (None, "steps"):
        bench_steps(gap, rank=64)
    if args.only in (None, "bf16"):
        bench_bf16_dense(args.steps)


if __name__ == "__main__":
    main()
