"""Miniature checks of the weight parametrizations' claims, 3 seeds.

(a) Pretraining, the same token budget for every row: llama_tiny on Shakespeare (byte-level BPE,
    1024 tokens), full-rank AdamW, GaLore, plain low-rank, low-rank + refactorization + reset
    (arXiv 2505.22922), SLTrain, LOST, SST, all at rank 32 of 128. Reports validation loss,
    parameters (total / trained), optimizer-state bytes, peak memory (RSS of the run's own process,
    interpreter included) and tokens/s. Each run is its own process, so the peak is its own.
(b) Compression: the digits MLP trained normally, with TRP and with Maestro, then truncated post hoc by
    `lrlab compress` to rank 8 and to 90% energy; PELA compresses the normally trained model to rank 8
    and trains it 200 more steps with feature distillation (and, as the control, without it).

    OMP_NUM_THREADS=1 python scripts/claims_parametrizations.py [--lm-steps 300] [--seeds 0 1 2] [--out DIR]
                                                                [--only a|b]

A rerun with the same --out reuses finished runs and compressions.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lrlab.cli import quiet_libraries
from lrlab.compress import compress
from lrlab.data import fetch
from lrlab.report.claims import final, finished, folder_names, mean_std, run_grid, table
from lrlab.train import compose

RANK = 32
RUN_IN_OWN_PROCESS = ("import sys; from lrlab.cli import quiet_libraries; quiet_libraries(); "
                      "from lrlab.train import compose, run; run(compose(sys.argv[2:], run_dir=sys.argv[1]))")


def lm_grid(steps: int) -> dict[str, list[str]]:
    every = steps // 4 + 5  # a few events per run, never after the last step (the summary reads live state)
    base = ["model=llama_tiny", "data=shakespeare", "data.vocab_size=1024", "data.seq_len=128",
            "data.batch_size=16", f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
            "trainer.limit_val_batches=40", "callbacks=none", "optimizer=adamw", "optimizer.lr=3e-3"]
    factors = [f"parametrization.rank={RANK}"]
    return {
        "AdamW (full rank)": base,
        "AdamW (full rank, lr 1e-3)": [*base, "optimizer.lr=1e-3"],
        # GaLore's per-group lr without its projection: attn/MLP at 1e-2 × 0.25, embeddings and lm_head at 1e-2
        "AdamW (full rank, lr 1e-2, attn/MLP ×0.25)": [*base, "optimizer.lr=1e-2", "optimizer.matrix_lr_scale=0.25"],
        "GaLore": [*base, "optimizer=galore", f"optimizer.rank={RANK}", "optimizer.update_proj_gap=50",
                   "optimizer.lr=0.01"],
        "low-rank": [*base, "parametrization=lowrank", *factors, f"parametrization.alpha={RANK}"],
        "low-rank + refactorization + reset": [*base, "parametrization=lowrank", *factors,
                                               f"parametrization.alpha={RANK}",
                                               f"parametrization.refactorize_every={every}"],
        "SLTrain": [*base, "parametrization=sltrain", *factors, f"parametrization.alpha={RANK}"],
        "LOST": [*base, "parametrization=lost", *factors],
        "SST": [*base, "parametrization=sst", *factors, f"parametrization.resample_every={every}",
                f"parametrization.resvd_every={every}"],
    }


def run_isolated(grid: dict[str, list[str]], seeds: list[int], root: Path) -> dict[str, list[dict]]:
    """`run_grid`, each run in a fresh process (its peak RSS is its own); finished runs are reused."""
    results = {}
    for label, folder in folder_names(grid).items():
        for seed in seeds:
            run_dir = root / folder / f"seed{seed}"
            overrides = [*grid[label], f"seed={seed}", "logger=csv", "resume=auto"]
            summary = finished(run_dir, compose(overrides, run_dir=str(run_dir)))
            if summary is None:
                subprocess.run([sys.executable, "-c", RUN_IN_OWN_PROCESS, str(run_dir), *overrides], check=True)
                summary = json.loads((run_dir / "summary.json").read_text())
            results.setdefault(label, []).append({**summary, "run_dir": str(run_dir)})
            print(f"  {label} seed {seed}: {summary['metrics']['final']}", flush=True)
    return results


def prepare_tokens(overrides: list[str]) -> None:
    """Train and cache the BPE tokenizer once here, so no run's time or peak memory includes it."""
    from lrlab.instantiate import instantiate_node

    instantiate_node(compose(overrides, run_dir="/nonexistent").data, "data").tokens()


def claim_a(args, root: Path) -> str:
    fetch.fetch("shakespeare")
    grid = lm_grid(args.lm_steps)
    prepare_tokens(grid["AdamW (full rank)"])
    results = run_isolated(grid, args.seeds, root / "a")
    header = (f"llama_tiny on Shakespeare (BPE 1024), {args.lm_steps} steps × 16 × 128 tokens, rank {RANK}/128, "
              f"seeds {args.seeds}")
    return header + "\n\n" + table(results, {
        "val loss": final("val/loss"),
        "params": lambda s: s["total_params"],
        "trained": lambda s: s["trainable_params"],
        "optimizer state MiB": lambda s: s["optimizer_state_bytes"] / 2**20,
        "peak RSS MiB": lambda s: s["peak_memory_bytes"] / 2**20,
        "tokens/s": lambda s: s["throughput"]["tokens_per_second"],
    })


def compressed(run_dir: Path, **mode) -> dict:
    """The `lrlab compress` report of the run's last checkpoint (reused when it was made before)."""
    tag = "-".join(f"{k}{v}" for k, v in mode.items())
    out = run_dir / "compressed" / tag
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    return compress(str(run_dir / "checkpoints" / "last.ckpt"), out=str(out), **mode)


def claim_b(args, root: Path) -> str:
    base = ["experiment=baseline/digits_mlp_adamw", "callbacks.checkpoint.every_n_train_steps=600"]
    trained = run_grid({
        "normal": base,
        "TRP": [*base, "parametrization=trp", "parametrization.period=10"],
        "Maestro": [*base, "parametrization=maestro"],
    }, args.seeds, str(root / "b"))
    for label, distill in (("PELA (rank 8, distillation)", 1.0), ("PELA control (rank 8, no distillation)", 0.0)):
        for seed in args.seeds:
            teacher = root / "b" / "normal" / f"seed{seed}" / "checkpoints" / "last.ckpt"
            trained.setdefault(label, []).extend(run_grid({label: [
                "experiment=pela/digits_mlp", "parametrization.rank=8", f"parametrization.feature_weight={distill}",
                f"parametrization.init_from={teacher}"]}, [seed], str(root / "b"))[label])
    rows = {}
    for label, summaries in trained.items():
        for summary in summaries:
            run_dir = Path(summary["run_dir"])
            rank, energy = compressed(run_dir, rank=8), compressed(run_dir, energy=0.9)
            rows.setdefault(label, []).append({
                "trained acc": summary["metrics"]["final"]["val/acc"],
                "acc, rank 8": rank["after"]["metrics"]["val/acc"],
                "nll, rank 8": rank["after"]["metrics"]["val/nll"],
                "params, rank 8": rank["after"]["params"],
                "acc, 90% energy": energy["after"]["metrics"]["val/acc"],
                "params, 90% energy": energy["after"]["params"],
                "ranks, 90% energy": sum(layer["rank"] for layer in energy["layers"]) / len(energy["layers"]),
            })
    columns = list(next(iter(rows.values()))[0])
    lines = ["| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label, values in rows.items():
        lines.append(f"| {label} | " + " | ".join(mean_std([v[c] for v in values]) for c in columns) + " |")
    header = (f"digits MLP (64-256-256-10), 600 steps (PELA: +200 from the normal run), `lrlab compress` of the two "
              f"body linears, seeds {args.seeds}")
    return header + "\n\n" + "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lm-steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="claims/parametrizations", help="run folder; a rerun reuses its runs")
    parser.add_argument("--only", choices=["a", "b"], default=None)
    args = parser.parse_args()
    quiet_libraries()
    root = Path(args.out)
    tables = []
    if args.only in (None, "b"):
        tables.append(claim_b(args, root))
    if args.only in (None, "a"):
        tables.append(claim_a(args, root))
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
