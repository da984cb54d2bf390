"""Adapter comparison on pretrained MiniLM-L6 + WordNet lexicographer classes (CPU, minutes).

Every adapter fine-tunes the same model for the same steps on the same small balanced subset;
the intruder-dimension callback runs on every adapted linear layer. Prints a markdown table:
trainable params, final validation accuracy, intruder dimensions (top-10 singular vectors of
each adapted W with max |cos| < 0.5 against the pre-trained ones, summed over layers).

    python scripts/claims_adapters.py --steps 40 --per-class 20 > claims_adapters.md
"""

import argparse
import sys
import tempfile

from lrlab.train import compose, run

RUNS = {
    "full fine-tuning": ["experiment=lora/minilm_wordnet_lora", "adapter=none", "~adapter.target_modules",
                         "~adapter.r", "optimizer.lr=5.0e-5"],
    "LoRA r=8": ["experiment=lora/minilm_wordnet_lora"],
    "LoRA r=8 + dropout 0.1": ["experiment=lora/minilm_wordnet_lora", "adapter.dropout=0.1"],
    "DoRA r=8": ["experiment=lora/minilm_wordnet_dora"],
    "PiSSA r=8": ["experiment=lora/minilm_wordnet_pissa"],
    "AdaLoRA 12->8": ["experiment=lora/minilm_wordnet_adalora"],
    "ALLoRA r=8": ["experiment=allora/minilm_wordnet_allora"],
    "SVFit 99%": ["experiment=svfit/minilm_wordnet_svfit"],
    "LIFT (rank-8 budget)": ["experiment=lift/minilm_wordnet_lift"],
}


def measure(name: str, overrides: list[str], steps: int, per_class: int, root: str) -> dict:
    cfg = compose([*overrides, "logger=none", "callbacks=intruders", "callbacks.intruders.include=[query,value]",
                   f"trainer.max_steps={steps}",
                   f"trainer.val_check_interval={steps}", f"data.per_class={per_class}", "seed=0"],
                  run_dir=f"{root}/{len(name)}_{abs(hash(name))}")
    summary = run(cfg)
    final = summary["metrics"]["final"]
    extra = summary["metrics"]["other"]
    return {"params": summary["trainable_params"], "acc": final.get("val/acc", float("nan")),
            "intruders": extra.get("intruders/total", float("nan")), "seconds": summary["wall_seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    print(f"MiniLM-L6 + WordNet lex classes (45), {args.per_class}/class, {args.steps} steps, batch 32, seed 0\n")
    print("| adapter | trainable params | val acc | intruders (sum over layers) | wall s |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as root:
        for name, overrides in RUNS.items():
            row = measure(name, overrides, args.steps, args.per_class, root)
            print(f"| {name} | {row['params']:,} | {row['acc']:.3f} | {row['intruders']:.0f} | {row['seconds']:.0f} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
