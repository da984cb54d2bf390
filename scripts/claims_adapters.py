"""Adapter claims, measured on CPU: markdown tables, mean ± std over seeds.

Parts (`--only`, default a b c; each prints its table when done):
  a  ALLoRA vs LoRA (+ dropout 0.1) and full fine-tuning on the pretrained MLP miniature
     (digits 0-4 -> 5-9): optimizer steps to each `--targets` validation accuracy (validated
     every `--val-every` steps) and final accuracy. The mini-claim: ALLoRA reaches a target in
     fewer steps than LoRA. ALLoRA's output-row rule at η² = 4, 2, 1 (Table 1's sweep) and the
     earlier per-factor-row rule (η = 4); LoRA and both rules under SGD (momentum 0.9, lr 0.03
     and 0.1), where Adam's normalisation cannot cancel the gradient coefficient.
  b  intruder dimensions (top-10 left singular vectors of each fine-tuned hidden layer with
     max |cos| < 0.5 against the pre-trained ones, summed over body.1 and body.3): low-rank LoRA
     vs full fine-tuning on the same miniature.
  c  LIFT (top-K entries of the rank-8 approximation) vs plain magnitude-sparse fine-tuning
     (top-K |W|), same budget K = (m + n) * 8 per layer, same optimizer and lr.
  d  trainable parameters and validation accuracy of every adapter on MiniLM-L6 + WordNet
     lexicographer classes (fetches WordNet; the slow part).

    python scripts/claims_adapters.py --out /tmp/claims/adapters        # a, b, c
    python scripts/claims_adapters.py --only d --seeds 0 --steps-minilm 100 --out /tmp/claims/adapters

A rerun with the same `--out` reuses the completed runs (one folder per part, label and seed).
The miniature's body is pretrained once (seed 0, cached); `--seeds` vary the fine-tuning:
the new head, the adapter init and the train/validation split.
"""

import argparse

from lrlab.cli import quiet_libraries
from lrlab.data import fetch
from lrlab.report.claims import best, final, first_step, run_grid, table

MINI = "digits_pretrained_mlp"
MINILM_LORA = "experiment=lora/minilm_wordnet_lora"
ALLORA_FORMS = {  # the output-row rule (the preset) over Table 1's η², and the earlier per-factor-row rule
    "output rows η²=4": [],
    "output rows η²=2": ["adapter.eta_squared=2"],
    "output rows η²=1": ["adapter.eta_squared=1"],
    "factor rows η=4 (earlier rule)": ["adapter.form=factor_rows", "adapter.eta_squared=16"],
}
ALLORA_SGD = ("output rows η²=4", "factor rows η=4 (earlier rule)")
GRIDS = {
    "a": {
        "LoRA r=8": [f"experiment=lora/{MINI}_lora"],
        "LoRA r=8 + dropout 0.1": [f"experiment=lora/{MINI}_lora", "adapter.dropout=0.1"],
        **{f"ALLoRA r=8, {form}": [f"experiment=allora/{MINI}_allora", *overrides]
           for form, overrides in ALLORA_FORMS.items()},
        "full fine-tuning": [f"experiment=baseline/{MINI}_full"],
        # under SGD the per-row coefficient is not normalised away as under Adam
        **{f"{name} (SGD lr {lr})": [*overrides, "optimizer=sgd", f"optimizer.lr={lr}"]
           for lr in (0.03, 0.1)
           for name, overrides in (("LoRA r=8", [f"experiment=lora/{MINI}_lora"]),
                                   *((f"ALLoRA r=8, {form}", [f"experiment=allora/{MINI}_allora", *o])
                                     for form, o in ALLORA_FORMS.items() if form in ALLORA_SGD))},
    },
    "b": {
        "LoRA r=1": [f"experiment=lora/{MINI}_lora", "adapter.r=1"],
        "LoRA r=8": [f"experiment=lora/{MINI}_lora"],
        "full fine-tuning": [f"experiment=baseline/{MINI}_full"],
    },
    "c": {
        "LIFT (principal weights)": [f"experiment=lift/{MINI}_lift"],
        "magnitude-sparse (largest weights)": [f"experiment=lift/{MINI}_magnitude"],
    },
    "d": {
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
    },
}
BUDGET = (64 + 256) * 8 + (256 + 256) * 8  # K = (m + n) * 8 over body.1 and body.3


def steps_to(target):
    return lambda s: first_step(s, "val/acc", target)


def part(name: str, args) -> tuple[list[str], str, dict]:
    """(extra overrides, table title, columns) of one part."""
    seeds = "seeds " + " ".join(map(str, args.seeds))
    trainable = {"trainable params": lambda s: s["trainable_params"]}
    if name == "d":
        steps = args.steps_minilm
        return ([f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                 f"data.per_class={args.per_class}", "callbacks=none"],
                f"(d) MiniLM-L6 + WordNet lexicographer classes (45), {args.per_class}/class, {steps} steps, "
                f"batch 32, {seeds}",
                {**trainable, "final val acc": final("val/acc"), "wall s per run": lambda s: s["wall_seconds"]})
    steps = args.steps_mini
    if name == "b":
        return ([f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "callbacks=intruders",
                 "callbacks.intruders.include=[body.1,body.3]"],
                f"(b) intruder dimensions after {steps} steps (body.1 + body.3, top-10, |cos| < 0.5), {seeds}",
                {**trainable, "intruders": lambda s: s["metrics"]["other"]["intruders/total"],
                 "final val acc": final("val/acc")})
    what = "ALLoRA vs LoRA" if name == "a" else \
        f"sparse fine-tuning at the same budget ({BUDGET:,} entries in body.1 + body.3, plus the head)"
    return ([f"trainer.max_steps={steps}", f"trainer.val_check_interval={args.val_every}", "callbacks=none"],
            f"({name}) {what}, {steps} steps, validated every {args.val_every}, {seeds}",
            {**{f"steps to val acc ≥ {t}": steps_to(t) for t in args.targets},
             "final val acc": final("val/acc"), "best val acc": best("val/acc")})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(GRIDS), default=["a", "b", "c"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default=None, help="runs folder (default: a new temp folder); a rerun continues")
    parser.add_argument("--steps-mini", type=int, default=200, help="fine-tuning steps on the miniature")
    parser.add_argument("--val-every", type=int, default=1, help="validation interval for steps-to-target (a, c)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95, 0.98],
                        help="target val accuracies (a, c)")
    parser.add_argument("--steps-minilm", type=int, default=200)
    parser.add_argument("--per-class", type=int, default=20)
    args = parser.parse_args()
    quiet_libraries()
    if "d" in args.only:
        fetch.fetch("wordnet")
    for name in args.only:
        extra, title, columns = part(name, args)
        grid = {label: [*overrides, *extra] for label, overrides in GRIDS[name].items()}
        results = run_grid(grid, args.seeds, args.out and f"{args.out}/{name}")
        print(f"\n### {title}\n\n{table(results, columns)}", flush=True)


if __name__ == "__main__":
    main()
