"""Miniature check of the low-rank optimizers' claims on a real corpus (Shakespeare, BPE 8192).

llama_tiny, the same token budget for every optimizer (steps × batch × seq), 3 seeds; reports
validation loss / perplexity and the projected group's optimizer-state bytes. Claims tested:
Fira ≤ GaLore; GaLore within a few % of AdamW at a fraction of the state; DCT ≈ GaLore-SVD.
FRUGAL runs both ways: the official block-wise variant (AdamW on 4 of the 14 attn/MLP weights,
signSGD on the rest) at its official lr 1e-3 (beside AdamW at 1e-3) and at AdamW's best 3e-3,
and the SVD variant.

    python scripts/claims_lowrank.py [--steps 300] [--seeds 0 1 2] [--out DIR] [--only "GaLore (svd)" Fira]
"""

import argparse
from pathlib import Path

from omegaconf import OmegaConf

from lrlab.cli import quiet_libraries
from lrlab.data import fetch
from lrlab.report.claims import final, run_grid, table


def attention_mlp_numel(overrides: list[str]) -> int:
    from hydra.utils import instantiate

    from lrlab.optim.routing import split_params
    from lrlab.train import compose

    cfg = compose(overrides, run_dir="/nonexistent")
    model_cfg = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "task"}
    return sum(p.numel() for _, p in split_params(instantiate(model_cfg))[0])


def is_adamw(summary: dict) -> bool:
    config = OmegaConf.load(Path(summary["run_dir"]) / "config.yaml")
    return config.optimizer._target_ == "lrlab.optim.adamw.build"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--out", default=None, help="run folder; a rerun reuses its finished runs")
    parser.add_argument("--only", nargs="+", default=None, help="only these rows (labels as printed)")
    args = parser.parse_args()
    quiet_libraries()
    fetch.fetch("shakespeare")
    base = ["model=llama_tiny", "data=shakespeare", "data.seq_len=128", "data.batch_size=16",
            f"trainer.max_steps={args.steps}", f"trainer.val_check_interval={args.steps}",
            "trainer.limit_val_batches=40", "callbacks=none"]
    lowrank = [f"optimizer.rank={args.rank}", "optimizer.update_proj_gap=50", "optimizer.lr=0.01"]
    grid = {
        "AdamW (lr 1e-3)": [*base, "optimizer=adamw", "optimizer.lr=1e-3"],  # FRUGAL's official lr
        "AdamW (lr 3e-3)": [*base, "optimizer=adamw", "optimizer.lr=3e-3"],
        "AdamW (lr 1e-2)": [*base, "optimizer=adamw", "optimizer.lr=1e-2"],  # the low-rank runs' lr
        # GaLore's per-group lr without the projection: attn/MLP at 1e-2 × 0.25, the rest at 1e-2
        "AdamW (lr 1e-2, attn/MLP ×0.25)": [*base, "optimizer=adamw", "optimizer.lr=1e-2",
                                            "optimizer.matrix_lr_scale=0.25"],
        "GaLore (svd)": [*base, "optimizer=galore", *lowrank],
        "Fira": [*base, "optimizer=fira", *lowrank],
        "DCT": [*base, "optimizer=dct", *lowrank],
        "FRUGAL (blocks, lr 1e-3)": [*base, "optimizer=frugal", "optimizer.update_proj_gap=50"],
        "FRUGAL (blocks, lr 3e-3)": [*base, "optimizer=frugal", "optimizer.update_proj_gap=50", "optimizer.lr=3e-3"],
        "FRUGAL (svd)": [*base, "optimizer=frugal_svd", *lowrank, "optimizer.residual_lr_scale=0.1"],
        "GradNormLoRP": [*base, "parametrization=weight_norm", "optimizer=galore", *lowrank],
        "momentum reset": [*base, "optimizer=lowrank_reset", *lowrank],
        "momentum reset (projected only)": [*base, "optimizer=lowrank_reset", *lowrank,
                                            "optimizer.on_refresh=reset_projected"],
    }
    unknown = sorted(set(args.only or ()) - set(grid))
    if unknown:
        parser.error(f"--only: unknown row(s) {unknown}; choose among {sorted(grid)}")
    results = run_grid({k: v for k, v in grid.items() if not args.only or k in args.only}, args.seeds, args.out)
    projected_numel = attention_mlp_numel(base)
    print(f"\nllama_tiny on Shakespeare (BPE 8192), {args.steps} steps × 16 × 128 tokens, rank {args.rank}/128, "
          f"T=50, seeds {args.seeds}\n")
    print(table(results, {
        "val loss": final("val/loss"),
        "val ppl": final("val/ppl"),
        # low-rank optimizers hold the projected attention/MLP weights in group 0 (FRUGAL's blocks:
        # the moments of the state-full ones); AdamW keeps two fp32 moments for the same weights
        "attn+MLP state KiB": lambda s: (8 * projected_numel if is_adamw(s)
                                         else s["optimizer_state_bytes_by_group"][0]) / 1024,
        "total state MiB": lambda s: s["optimizer_state_bytes"] / 2**20,
    }))


if __name__ == "__main__":
    main()
