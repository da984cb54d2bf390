"""Peak GPU memory of each paper-scale C4 preset, estimated from measurements on the CPU, and the
micro-batch that fits one 80 GB GPU while keeping the paper's global batch (512 × 256 tokens).

For each preset (its model, parametrization, optimizer and precision as composed), the model is
built with 1 and 2 decoder layers at full width and runs its forward pass and loss on 1 and 2
sequences of 256 tokens; `lrlab.probes.LiveBytes` measures the peak of what they allocate
(activations kept for the backward pass, logits and the fp32 loss, bf16 weight copies under
bf16-mixed). One optimizer step (on zero gradients, with a random basis instead of an SVD: the
same state shapes and dtypes) gives the state. Each part is linear in the layer count and the
activations in the micro-batch, so at the preset's L layers and micro-batch B

    peak = weights + gradients + optimizer state + forward(L, 1) + (B - 1) · per sequence(L)
           + B · seq_len · vocab · (4 + logits' bytes)     (the logits' gradient, fp32 and cast)

counting every gradient as alive beside every activation (in the backward pass they are not
yet: an upper bound). The micro-batch is the largest power of two whose estimate stays under the
budget (72 GiB of 80: CUDA context, allocator fragmentation and the step's transients).
bf16-mixed runs under CPU autocast (the same bf16 matmuls as on a GPU); attention is SDPA's fused
kernel on both (no T×T matrix is kept).

    python scripts/preset_memory.py                       # every conf/experiment/*/llama_*_c4*.yaml and setting
    python scripts/preset_memory.py galore/llama_1b_c4    # some presets
"""

import argparse
import contextlib
import sys
import time

import torch
from omegaconf import OmegaConf

from lrlab import conf_dir
from lrlab.parts import build_methods
from lrlab.instantiate import build_optimizer, instantiate_node
from lrlab.losses.cross_entropy import causal_lm_cross_entropy
from lrlab.optim.state import state_bytes
from lrlab.probes import LiveBytes
from lrlab.train import compose

GLOBAL_BATCH, BUDGET_GIB, GIB = 512, 72.0, 2**30


def paper_presets() -> list[str]:
    experiments = sorted(p.relative_to(conf_dir() / "experiment").with_suffix("").as_posix()
                         for p in conf_dir().glob("experiment/*/llama_*_c4*.yaml"))
    settings = sorted(f"setting:{p.stem}" for p in conf_dir().glob("setting/c4_llama_*.yaml"))
    return experiments + settings


def preset_overrides(preset: str) -> list[str]:
    return [f"setting={preset.split(':', 1)[1]}"] if preset.startswith("setting:") else [f"experiment={preset}"]


FAST_BASIS = {"svd": "random", "eigh": "random", "randomized": "random"}  # same state shapes and dtypes
PASSES: dict[tuple, int] = {}  # (model, methods, precision, layers, rows) -> forward/backward peak, shared by presets


def measure(preset: str, layers: int, sequences: int, checkpointing: bool) -> dict:
    """Bytes of one training step of the preset with `layers` decoder layers on `sequences` rows.
    The optimizer's basis is drawn at random instead of by an SVD (the state's shapes and dtypes
    are the same; only the time differs); presets that share their model, methods and precision
    share the forward/backward measurement."""
    overrides = [*preset_overrides(preset), f"model.num_hidden_layers={layers}",
                 f"model.activation_checkpointing={str(checkpointing).lower()}"]
    basis = compose(overrides).optimizer.get("basis")
    cfg = compose([*overrides, *([f"optimizer.basis={FAST_BASIS[basis]}"] if basis in FAST_BASIS else [])])
    precision, seq_len, vocab = str(cfg.trainer.precision), int(cfg.data.seq_len), int(cfg.data.vocab_size)
    torch.manual_seed(0)
    model = instantiate_node(cfg.model, "model")
    methods = build_methods(cfg)
    for method in methods:
        model = method.transform_model(model)
    if precision == "bf16-true":
        model = model.to(torch.bfloat16)
    model.train()
    optimizer = build_optimizer(model, methods, OmegaConf.to_container(cfg.optimizer, resolve=True))
    tokens = torch.randint(0, vocab, (sequences, seq_len), generator=torch.Generator().manual_seed(0))
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed"
                else contextlib.nullcontext())
    key = (OmegaConf.to_yaml(cfg.model), OmegaConf.to_yaml(cfg.get("parametrization") or {}),
           OmegaConf.to_yaml(cfg.get("adapter") or {}), precision, layers, sequences)
    if key not in PASSES:
        with LiveBytes() as live:
            with autocast:
                logits = model(input_ids=tokens).logits
            causal_lm_cross_entropy(logits, tokens)
            PASSES[key] = (live.peak, logits.element_size())
            del logits
    trained = [p for p in model.parameters() if p.requires_grad]
    for p in trained:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    weights = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    grads = sum(p.numel() * p.element_size() for p in trained)
    logits_grad = seq_len * vocab * (4 + PASSES[key][1])
    return {"weights": weights + grads, "state": state_bytes(optimizer)[0], "pass": PASSES[key][0],
            "logits_grad": logits_grad, "precision": precision,
            "layers": int(compose(preset_overrides(preset)).model.num_hidden_layers)}


def linear(at1: float, at2: float, x: int) -> float:
    return at1 + (at2 - at1) * (x - 1)


def estimate(preset: str, checkpointing: bool) -> dict:
    runs = {(l, b): measure(preset, l, b, checkpointing) for l in (1, 2) for b in (1, 2)}
    layers = runs[1, 1]["layers"]
    weights = linear(runs[1, 1]["weights"], runs[2, 1]["weights"], layers)
    state = linear(runs[1, 1]["state"], runs[2, 1]["state"], layers)
    one = linear(runs[1, 1]["pass"], runs[2, 1]["pass"], layers)
    per_sequence = linear(runs[1, 2]["pass"] - runs[1, 1]["pass"], runs[2, 2]["pass"] - runs[2, 1]["pass"], layers)

    logits_grad = runs[1, 1]["logits_grad"]

    def peak(batch: int) -> float:
        return (weights + state + one + (batch - 1) * per_sequence + batch * logits_grad) / GIB

    fitting = [b for b in (2**k for k in range(10)) if b <= GLOBAL_BATCH and peak(b) <= BUDGET_GIB]
    batch = max(fitting) if fitting else 0
    return {"precision": runs[1, 1]["precision"], "layers": layers, "weights": weights / GIB, "state": state / GIB,
            "per_sequence": (per_sequence + logits_grad) / 2**20, "batch": batch, "accumulate": GLOBAL_BATCH // batch if batch else 0,
            "peak": peak(batch) if batch else float("nan"), "full_batch": peak(GLOBAL_BATCH)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("presets", nargs="*", help="experiment names (galore/llama_1b_c4) or setting:<name>")
    parser.add_argument("--checkpointing", action="store_true", help="with model.activation_checkpointing=true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{'preset':34} {'precision':10} {'L':>3} {'w+grads':>8} {'state':>7} {'MiB/seq':>8} {'512 rows':>9} "
          f"{'micro':>6} {'accum':>6} {'peak GiB':>9} {'s':>5}")
    for preset in args.presets or paper_presets():
        start = time.perf_counter()
        row = estimate(preset, args.checkpointing)
        print(f"{preset:34} {row['precision']:10} {row['layers']:>3} {row['weights']:>8.2f} {row['state']:>7.2f} "
              f"{row['per_sequence']:>8.1f} {row['full_batch']:>9.1f} {row['batch']:>6} {row['accumulate']:>6} "
              f"{row['peak']:>9.1f} {time.perf_counter() - start:>5.0f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
