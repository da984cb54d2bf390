"""`lrlab estimate` against a measured CPU peak: for each model, `lrlab estimate --json` and a
2-step `lrlab train` (each in its own process, so each peak is its own) with the same overrides;
prints predicted and measured bytes and their ratio.

    OMP_NUM_THREADS=1 python scripts/check_estimate.py llama_20m llama_60m
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

SETTING = ["model.vocab_size=32000", "data.batch_size=16", "data.seq_len=128", "optimizer=adamw",
           "trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "logger=none"]
LRLAB = [sys.executable, "-m", "lrlab.cli"]


def compare(model: str, extra: tuple = ()) -> tuple[int, int]:
    """(predicted total bytes, measured peak_memory_bytes) for `model` in SETTING."""
    overrides = [f"model={model}", *SETTING, *extra]
    predicted = json.loads(subprocess.run([*LRLAB, "estimate", "--json", *overrides], check=True,
                                          capture_output=True, text=True).stdout)["total_bytes"]
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([*LRLAB, "train", *overrides, "run_name=peak"], check=True, capture_output=True, cwd=out)
        measured = json.loads((Path(out) / "outputs" / "runs" / "peak" / "summary.json").read_text())
    return predicted, measured["peak_memory_bytes"]


def main(models: list[str]) -> None:
    print("| model | estimate (MiB) | measured peak RSS (MiB) | estimate / measured |")
    print("|---|---|---|---|")
    for model in models:
        predicted, measured = compare(model)
        print(f"| {model} | {predicted / 2**20:.0f} | {measured / 2**20:.0f} | {predicted / measured:.3f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["llama_20m", "llama_60m"])
