"""Adapter claims, measured on CPU: markdown tables, mean ± std over seeds.

Parts (`--only`, default a,b,c; each prints its table when done):
  a  ALLoRA vs LoRA (+ dropout 0.1) on the pretrained MLP miniature (digits 0-4 -> 5-9):
     optimizer steps to a target validation accuracy (validated every `--val-every` steps) and
     final accuracy. The mini-claim: ALLoRA reaches the target in fewer steps.
  b  intruder dimensions (top-10 left singular vectors of each fine-tuned hidden layer with
     max |cos| < 0.5 against the pre-trained ones, summed over body.1 and body.3): low-rank LoRA
     vs full fine-tuning on the same miniature.
  c  LIFT (top-K entries of the rank-8 approximation) vs plain magnitude-sparse fine-tuning
     (top-K |W|), same budget K = (m + n) * 8 per layer, same optimizer and lr.
  d  trainable parameters and validation accuracy of every adapter on MiniLM-L6 + WordNet
     lexicographer classes (needs `lrlab data fetch wordnet`; the slow part).

    python scripts/claims_adapters.py > claims_adapters.md                # a, b, c: ~10 min on 2 cores
    python scripts/claims_adapters.py --only d --steps-minilm 200 --per-class 20

The miniature's body is pretrained once (seed 0, cached); `--seeds` vary the fine-tuning:
the new head, the adapter init and the train/validation split.
"""

import argparse
import csv
import statistics
import sys
import tempfile
from pathlib import Path

from lrlab.train import compose, run

MINI = "digits_pretrained_mlp"
PART_A = {
    "LoRA r=8": [f"experiment=lora/{MINI}_lora"],
    "LoRA r=8 + dropout 0.1": [f"experiment=lora/{MINI}_lora", "adapter.dropout=0.1"],
    "ALLoRA r=8": [f"experiment=allora/{MINI}_allora"],
}
PART_B = {
    "LoRA r=1": [f"experiment=lora/{MINI}_lora", "adapter.r=1"],
    "LoRA r=8": [f"experiment=lora/{MINI}_lora"],
    "full fine-tuning": [f"experiment=baseline/{MINI}_full"],
}
PART_C = {
    "LIFT (principal weights)": [f"experiment=lift/{MINI}_lift"],
    "magnitude-sparse (largest weights)": [f"experiment=lift/{MINI}_magnitude"],
}
MINILM_LORA = "experiment=lora/minilm_wordnet_lora"
PART_D = {
    "full fine-tuning (AdamW)": [MINILM_LORA, "adapter=none", "~adapter.target_modules", "~adapter.r",
                                 "optimizer.lr=5.0e-5"],
    "full fine-tuning (GaLore r=8)": ["experiment=galore/minilm_wordnet"],
    "LoRA r=8": [MINILM_LORA],
    "LoRA r=8 + dropout 0.1": [MINILM_LORA, "adapter.dropout=0.1"],
    "rsLoRA r=8": [MINILM_LORA, "adapter=rslora"],
    "DoRA r=8": ["experiment=lora/minilm_wordnet_dora"],
    "PiSSA r=8": ["experiment=lora/minilm_wordnet_pissa"],
    "MiSS r=8": [MINILM_LORA, "adapter=miss"],
    "AdaLoRA 12->8": ["experiment=lora/minilm_wordnet_adalora"],
    "EVA r=8": ["experiment=eva/minilm_wordnet_eva"],
    "BA-LoRA r=8": ["experiment=ba_lora/minilm_wordnet_ba_lora"],
    "IncreLoRA 1->8": ["experiment=increlora/minilm_wordnet_increlora"],
    "ALLoRA r=8": ["experiment=allora/minilm_wordnet_allora"],
    "SVFit 99%": ["experiment=svfit/minilm_wordnet_svfit"],
    "LIFT (rank-8 budget)": ["experiment=lift/minilm_wordnet_lift"],
    "magnitude-sparse (rank-8 budget)": ["experiment=lift/minilm_wordnet_lift", "adapter.select=magnitude"],
    "SaRA (weights below 2e-3)": [MINILM_LORA, "adapter=sara", "~adapter.r"],
}


def val_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(optimizer steps, val/acc) at every validation, from the CSV log (its step is 0-based)."""
    with open(run_dir / "csv" / "metrics.csv") as handle:
        return [(int(row["step"]) + 1, float(row["val/acc"])) for row in csv.DictReader(handle) if row.get("val/acc")]


def measure(overrides: list[str], seed: int, run_dir: Path, extra: list[str]) -> dict:
    summary = run(compose([*overrides, *extra, f"seed={seed}", "logger=csv"], run_dir=str(run_dir)))
    return {"summary": summary, "curve": val_curve(run_dir)}


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, acc in curve if acc >= target), None)


def mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}"


def grid(runs: dict, seeds: list[int], root: Path, extra: list[str]) -> dict[str, list[dict]]:
    results = {}
    for index, (name, overrides) in enumerate(runs.items()):
        results[name] = [measure(overrides, seed, root / f"{index}_{seed}", extra) for seed in seeds]
    return results


def part_a(args, root: Path) -> None:
    extra = [f"trainer.max_steps={args.steps_mini}", f"trainer.val_check_interval={args.val_every}", "callbacks=none"]
    results = grid(PART_A, args.seeds, root / "a", extra)
    print(f"\n### (a) steps to val acc >= {args.target} (validated every {args.val_every} steps), "
          f"{args.steps_mini} steps, seeds {args.seeds}\n")
    print("| method | steps to target | reached | final val acc |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        steps = [s for s in (steps_to(r["curve"], args.target) for r in rows) if s is not None]
        final = [r["summary"]["metrics"]["final"]["val/acc"] for r in rows]
        print(f"| {name} | {mean_std(steps, 1)} | {len(steps)}/{len(rows)} | {mean_std(final)} |")


def part_b(args, root: Path) -> None:
    extra = [f"trainer.max_steps={args.steps_mini}", f"trainer.val_check_interval={args.steps_mini}",
             "callbacks=intruders", "callbacks.intruders.include=[body.1,body.3]"]
    results = grid(PART_B, args.seeds, root / "b", extra)
    print(f"\n### (b) intruder dimensions after {args.steps_mini} steps (body.1 + body.3, top-10, |cos| < 0.5), "
          f"seeds {args.seeds}\n")
    print("| method | trainable params | intruders | final val acc |")
    print("|---|---:|---:|---:|")
    for name, rows in results.items():
        intruders = [r["summary"]["metrics"]["other"]["intruders/total"] for r in rows]
        final = [r["summary"]["metrics"]["final"]["val/acc"] for r in rows]
        print(f"| {name} | {rows[0]['summary']['trainable_params']:,} | {mean_std(intruders, 1)} | {mean_std(final)} |")


def part_c(args, root: Path) -> None:
    extra = [f"trainer.max_steps={args.steps_mini}", f"trainer.val_check_interval={args.val_every}", "callbacks=none"]
    results = grid(PART_C, args.seeds, root / "c", extra)
    budget = (64 + 256) * 8 + (256 + 256) * 8
    print(f"\n### (c) sparse fine-tuning at the same budget ({budget:,} entries in body.1 + body.3, "
          f"plus the head), {args.steps_mini} steps, seeds {args.seeds}\n")
    print(f"| selection | steps to val acc >= {args.target} | reached | final val acc | best val acc |")
    print("|---|---:|---:|---:|---:|")
    for name, rows in results.items():
        steps = [s for s in (steps_to(r["curve"], args.target) for r in rows) if s is not None]
        final = [r["summary"]["metrics"]["final"]["val/acc"] for r in rows]
        best = [r["summary"]["metrics"]["best"]["val/acc"] for r in rows]
        print(f"| {name} | {mean_std(steps, 1)} | {len(steps)}/{len(rows)} | {mean_std(final)} | {mean_std(best)} |")


def part_d(args, root: Path) -> None:
    extra = [f"trainer.max_steps={args.steps_minilm}", f"trainer.val_check_interval={args.steps_minilm}",
             f"data.per_class={args.per_class}", "callbacks=none"]
    print(f"\n### (d) MiniLM-L6 + WordNet lex classes (45), {args.per_class}/class, {args.steps_minilm} steps, "
          f"batch 32, seeds {args.seeds}\n")
    print("| adapter | trainable params | final val acc | wall s (per run) |")
    print("|---|---:|---:|---:|")
    for index, (name, overrides) in enumerate(PART_D.items()):
        rows = [measure(overrides, seed, root / "d" / f"{index}_{seed}", extra) for seed in args.seeds]
        final = [r["summary"]["metrics"]["final"]["val/acc"] for r in rows]
        wall = [r["summary"]["wall_seconds"] for r in rows]
        print(f"| {name} | {rows[0]['summary']['trainable_params']:,} | {mean_std(final)} | {mean_std(wall, 0)} |")
        sys.stdout.flush()


PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="a,b,c", help="comma-separated parts among a,b,c,d")
    parser.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--steps-mini", type=int, default=200, help="fine-tuning steps on the miniature")
    parser.add_argument("--val-every", type=int, default=5, help="validation interval for steps-to-target")
    parser.add_argument("--target", type=float, default=0.95, help="target validation accuracy (a, c)")
    parser.add_argument("--steps-minilm", type=int, default=200)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    parts = args.only.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown part(s) {unknown}; choose among {sorted(PARTS)}")
    with tempfile.TemporaryDirectory() as root:
        for part in parts:
            PARTS[part](args, Path(root))
            sys.stdout.flush()


if __name__ == "__main__":
    main()
