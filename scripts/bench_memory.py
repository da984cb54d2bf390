"""Peak memory per method: each run is its own `lrlab train` process (its peak RSS is its own),
3 steps, same data, batch 4 x 128, vocab 32,000; `summary.json`'s `peak_memory_bytes` and
`optimizer_state_bytes`, and `lrlab estimate`'s total for the same overrides. The ratio is the
peak against AdamW's on the same model; "vs normal step" is a layer-wise row's peak minus the
same optimizer's without it.

    OMP_NUM_THREADS=1 python scripts/bench_memory.py llama_60m llama_130m [override ...]

Overrides (arguments holding `=`) apply to every run, e.g. `data.batch_size=16`; the larger the
batch, the more the activations and the fp32 loss's transient at the start of the backward pass
(3 x B x S x V x 4 bytes: 786 MB at batch 16 x 128) weigh against the gradients the layer-wise
step removes. `scripts/memory_phases.py` shows in which phase a run's peak is set.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

SETTING = ["model.vocab_size=32000", "data.batch_size=4", "data.seq_len=128", "trainer.max_steps=3",
           "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "trainer.gradient_clip_val=null",
           "logger=none"]
METHODS = {
    "AdamW": ["optimizer=adamw"],
    "GaLore r=128": ["optimizer=galore", "optimizer.rank=128"],
    "GaLore r=128, layer-wise": ["optimizer=galore", "optimizer.rank=128", "optimizer.layerwise=true"],
    "AdamW, layer-wise": ["optimizer=adamw", "optimizer.layerwise=true"],
    "LoRA r=8 (AdamW)": ["optimizer=adamw", "adapter=lora"],
    "lowrank parametrization (AdamW)": ["optimizer=adamw", "parametrization=lowrank"],
}
NORMAL_STEP = {"GaLore r=128, layer-wise": "GaLore r=128", "AdamW, layer-wise": "AdamW"}
LRLAB = [sys.executable, "-m", "lrlab.cli"]


def measure(overrides: list[str]) -> tuple[dict, int]:
    estimate = json.loads(subprocess.run([*LRLAB, "estimate", "--json", *overrides], check=True,
                                         capture_output=True, text=True).stdout)["total_bytes"]
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([*LRLAB, "train", *overrides, "run_name=peak"], check=True, capture_output=True, cwd=out)
        return json.loads((Path(out) / "outputs" / "runs" / "peak" / "summary.json").read_text()), estimate


def main(models: list[str], extra: list[str]) -> None:
    mib = 2 ** 20
    print("| model | method | peak RSS (MiB) | vs AdamW | layer-wise vs normal step (MiB) | "
          "optimizer state (MiB) | `lrlab estimate` total (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for model in models:
        peaks = {}
        for method, overrides in METHODS.items():
            summary, estimate = measure([f"model={model}", *SETTING, *overrides, *extra])
            peaks[method] = peak = summary["peak_memory_bytes"] / mib
            normal = NORMAL_STEP.get(method)
            saved = f"{peak - peaks[normal]:+.0f}" if normal else ""
            print(f"| {model} | {method} | {peak:.0f} | {peak / peaks['AdamW']:.2f} | {saved} | "
                  f"{summary['optimizer_state_bytes'] / mib:.1f} | {estimate / mib:.0f} |", flush=True)


if __name__ == "__main__":
    named = [a for a in sys.argv[1:] if "=" not in a]
    main(named or ["llama_60m", "llama_130m"], [a for a in sys.argv[1:] if "=" in a])
