"""Miniature checks of the regularizer claims, 3 seeds each.

1. ELR vs CE, MNIST-5k with 40% symmetric noise: best vs final accuracy (CE peaks then falls
   as it memorises) and the fraction of noisy labels memorised.
2. PS-KD vs CE on digits: accuracy, ECE, NLL.
3. Modular addition (p = 113, 40% train, full batch, the official code's setting): StableMax +
   ⊥AdamW and softmax + ⊥AdamW without weight decay, softmax CE + AdamW without weight decay
   (Softmax Collapse expected), softmax CE + AdamW with weight decay 1.0 (the classic recipe).
4. Nested dropout vs dropout vs CE under 40% symmetric noise on MNIST-5k; nested dropout is
   evaluated at its best truncation k on validation (the official test), the others with all
   features; the all-features accuracy of every row is shown too.

    python scripts/claims_regularizers.py [--seeds 0 1 2] [--only elr pskd grokking nested]
"""

import argparse

from lrlab.cli import quiet_libraries
from lrlab.data import fetch
from lrlab.report.claims import best, final, first_step, last_logged, run_grid, table


def evaluated(kind: str):
    """Validation accuracy as each method is evaluated: the best truncation k for nested dropout
    (`val/acc_best_k`, the official test), all features otherwise."""
    return lambda s: s["metrics"][kind].get("val/acc_best_k", s["metrics"][kind].get("val/acc", float("nan")))


CLAIMS = {
    "elr": ({"CE": ["experiment=elr/mnist5k_sym40_ce", "callbacks=noisy_labels"],
             "ELR (β 0.7, λ 3)": ["experiment=elr/mnist5k_sym40"]},
            {"best val acc": best("val/acc"), "final val acc": final("val/acc"),
             "noisy memorised": final("val/mem_noisy"), "noisy → clean": final("val/mem_clean")}),
    "pskd": ({"CE": ["experiment=pskd/digits_mlp", "loss=cross_entropy"],
              "PS-KD (α_T 0.8)": ["experiment=pskd/digits_mlp"]},
             {"val acc": final("val/acc"), "ECE": final("val/ece"), "NLL": final("val/nll")}),
    "grokking": ({"StableMax + ⊥AdamW, wd 0": ["experiment=grokking/modadd_stablemax_orthograd"],
                  "softmax CE + ⊥AdamW, wd 0": ["experiment=grokking/modadd_orthograd"],
                  "softmax CE + AdamW, wd 0": ["experiment=grokking/modadd_softmax"],
                  "softmax CE + AdamW, wd 1.0": ["experiment=grokking/modadd_softmax_wd"]},
                 {"best val acc": best("val/acc"), "final val acc": final("val/acc"),
                  "steps to 95% val acc": lambda s: first_step(s, "val/acc", 0.95),
                  "last train acc": lambda s: last_logged(s, "train/acc"),
                  "softmax collapse": final("val/softmax_collapse"),
                  "SC on val": final("val/softmax_collapse_val"),
                  "zero loss": final("val/zero_loss"),
                  "zero gradient": final("val/zero_gradient")}),
    "nested": ({"CE": ["experiment=elr/mnist5k_sym40_ce", "callbacks=noisy_labels"],
                "dropout 0.5": ["experiment=elr/mnist5k_sym40_ce", "callbacks=noisy_labels", "model.dropout=0.5"],
                "nested dropout (σ 10)": ["experiment=nested_dropout/mnist5k_sym40"]},
               {"best val acc": evaluated("best"), "final val acc": evaluated("final"),
                "features kept (final k)": final("val/best_k"), "best val acc, all features": best("val/acc"),
                "final val acc, all features": final("val/acc"), "noisy memorised": final("val/mem_noisy")}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(CLAIMS), default=list(CLAIMS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    quiet_libraries()
    fetch.fetch("mnist5k")
    for name in args.only:
        grid, columns = CLAIMS[name]
        results = run_grid(grid, args.seeds, args.out and f"{args.out}/{name}")
        print(f"\n### {name} (seeds {args.seeds})\n")
        print(table(results, columns))


if __name__ == "__main__":
    main()
