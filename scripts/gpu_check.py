"""The GPU paths in a few minutes: short bf16 jobs on llama_60m and the 130M/350M paper presets at
their micro-batch, one table. Run through `scripts/gpu_check.sh` (it installs what is missing);
`--cpu` shrinks every job so that the whole check runs on a CPU (tests/test_gpu_check.py).

Jobs (each `lrlab train` with its overrides, run in this process one after the other; the peak
memory is reset at each start):
- adamw, galore, fira, dct (bf16-mixed), dct_bf16_true, lora: llama_60m on local text (the
  standard library's source, `lrlab smoke`'s corpus and BPE tokenizer) at the C4 shapes (vocab
  32100, seq 256), rank 128 as the paper's 60M runs, one projection refresh inside the measured
  steps;
- galore_resume, dct_resume: a straight run with checkpoints, then the same run from the
  checkpoint of a step between two refreshes; the last weights must equal the straight run's;
- fsdp2: `trainer=fsdp2` on one device;
- preset_130m, preset_350m: `galore/llama_130m_c4` and `galore/llama_350m_c4` for 3 steps with
  their micro-batch and accumulation (data swapped for the local text, shapes kept).

Columns: status, final val loss, tokens/s and step ms (`summary.json`'s throughput, warm-up left
out), peak GiB (CUDA max allocated; on a CPU the process's peak RSS), optimizer-state MiB against
its formula (two fp32 moments per dense entry; per projected m×n weight at rank r two r×n moments
and the basis, `lrlab.optim.projector.state_bytes_formula`), and the ratios to AdamW with their
targets: low-rank tokens/s >= 0.8x AdamW, peak <= AdamW's. Exit code 1 when a job fails, a resume
differs or a state differs from its formula; a missed speed or memory target is shown, not fatal.
"""

import argparse
import contextlib
import logging
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

GIB, MIB = 2**30, 2**20
LOW_RANK = ("galore", "fira", "dct")


@dataclass
class Scale:
    """Sizes of the check: the GPU's, or `--cpu`'s miniature."""
    steps: int = 60
    gap: int = 25           # projection refresh period: refreshes at steps 0 and 25 and 50
    split: int = 6          # the resume jobs: checkpoint at `split`, straight to 2 x split
    resume_gap: int = 4     # refreshes at 0, 4, 8: the split at 6 falls between two
    batch: int = 64
    seq_len: int = 256
    vocab: int = 32100
    model: list[str] = field(default_factory=list)
    trainer: list[str] = field(default_factory=lambda: ["trainer=gpu"])


GPU = Scale()
CPU = Scale(steps=8, gap=3, split=4, resume_gap=3, batch=8, seq_len=32, vocab=512,
            model=["model.num_hidden_layers=2", "model.hidden_size=64", "model.intermediate_size=128",
                   "model.num_attention_heads=4"],
            trainer=["trainer=cpu", "trainer.precision=bf16-mixed"])


def data_overrides(corpus, scale: Scale, batch: int | None = None) -> list[str]:
    train, val, tok = corpus
    return ["data=hf_text", "data.dataset=text", f"data.tokenizer={tok}", f"data.vocab_size={scale.vocab}",
            f"data.data_files={{train:'{train}',validation:'{val}'}}", f"data.seq_len={scale.seq_len}",
            f"data.batch_size={batch or scale.batch}", "data.val_blocks=32", "data.num_workers=0"]


def llama_jobs(corpus, scale: Scale) -> dict[str, list[str]]:
    base = ["model=llama_60m", *scale.model, *data_overrides(corpus, scale), *scale.trainer,
            f"trainer.max_steps={scale.steps}", f"trainer.val_check_interval={scale.steps}",
            "trainer.limit_val_batches=4", "scheduler=constant", "scheduler.warmup_ratio=0"]
    low_rank = ["optimizer.rank=128" if not scale.model else "optimizer.rank=8", f"optimizer.update_proj_gap={scale.gap}"]
    jobs = {
        "adamw": [*base, "optimizer=adamw", "optimizer.lr=1e-3"],
        "galore": [*base, "optimizer=galore", *low_rank],
        "fira": [*base, "optimizer=fira", *low_rank],
        "dct": [*base, "optimizer=dct", *low_rank],
        "dct_bf16_true": [*[o for o in base if not o.startswith("trainer.precision")], "optimizer=dct", *low_rank,
                          "trainer.precision=bf16-true"],
        "lora": [*base, "adapter=lora", "adapter.target_modules=[q_proj,k_proj,v_proj,o_proj]", "optimizer=adamw",
                 "optimizer.lr=1e-3"],
        "fsdp2": [*[o for o in base if not o.startswith(("trainer=", "trainer.precision"))], "trainer=fsdp2",
                  "trainer.devices=1",
                  "optimizer=adamw", "optimizer.lr=1e-3"],
    }
    for name, optimizer in (("galore_resume", "galore"), ("dct_resume", "dct")):
        jobs[name] = [*base, f"optimizer={optimizer}", low_rank[0], f"optimizer.update_proj_gap={scale.resume_gap}",
                      f"trainer.max_steps={2 * scale.split}", f"trainer.val_check_interval={2 * scale.split}",
                      f"callbacks.checkpoint.every_n_train_steps={scale.split}", "callbacks.checkpoint.save_top_k=-1"]
    return jobs


def preset_jobs(corpus, scale: Scale) -> dict[str, list[str]]:
    """The paper presets at their own micro-batch, model and precision (`--cpu`: `lrlab smoke`'s miniature)."""
    from lrlab import smoke
    from lrlab.train import compose

    jobs = {}
    for size in ("130m", "350m"):
        preset = f"galore/llama_{size}_c4"
        cfg = compose([f"experiment={preset}"])
        if scale.model:  # --cpu
            shrink, _ = smoke.miniature(cfg, smoke.choices(preset), Path(corpus[0]).parent)
        else:
            shrink = data_overrides(corpus, scale, int(cfg.data.batch_size)) + ["data.pack=false"]
        batches = 3 * int(cfg.trainer.accumulate_grad_batches)  # validation counts micro-batches
        jobs[f"preset_{size}"] = [f"experiment={preset}", *shrink, "trainer.max_steps=3",
                                  f"trainer.val_check_interval={batches}", "trainer.limit_val_batches=2",
                                  "data.val_tokens=null"]
    return jobs


def train(name: str, overrides: list[str], out: Path, log) -> dict | None:
    """`lrlab train OVERRIDES run_name=NAME` in this process (one import for all jobs); None when it fails."""
    from lrlab.train import compose, run

    log.write(f"\n## {name}: lrlab train {' '.join(overrides)}\n")
    try:
        with contextlib.redirect_stdout(log):
            return run(compose([*overrides, f"run_name={name}", "logger=none"], run_dir=str(out / "runs" / name)))
    except Exception:  # a failing job is a row of the table, not the end of the check
        log.write(traceback.format_exc())
        return None
    finally:
        log.flush()


def resumed_equal(name: str, overrides: list[str], split: int, out: Path, log) -> tuple[dict | None, str]:
    """(the straight run's summary, '' or why the resumed run differs)."""
    import torch

    from lrlab.resume import load_whole

    straight = train(name, overrides, out, log)
    if straight is None:
        return None, "the straight run failed"
    checkpoint = out / "runs" / name / "checkpoints" / f"step{split:06d}.ckpt"
    if train(f"{name}_from_{split}", [*overrides, f"ckpt_path={checkpoint}"], out, log) is None:
        return straight, "the resumed run failed"
    last = [load_whole(out / "runs" / run / "checkpoints" / "last.ckpt")
            for run in (name, f"{name}_from_{split}")]
    differ = {k: float((a.float() - last[1]["state_dict"][k].float()).abs().max())
              for k, a in last[0]["state_dict"].items() if not torch.equal(a, last[1]["state_dict"][k])}
    if differ:
        worst = max(differ, key=differ.get)
        return straight, f"resumed weights differ in {len(differ)} tensors (max |diff| {differ[worst]:.3g} in {worst})"
    return straight, ""


def state_formula(overrides: list[str], trainable: int) -> int:
    """Optimizer-state bytes the formula gives for this job's model and optimizer."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lrlab.optim.projector import state_bytes_formula
    from lrlab.optim.routing import split_params
    from lrlab.train import compose

    cfg = compose([o for o in overrides if not o.startswith(("ckpt_path", "trainer="))])
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    if "rank" not in optimizer:
        return 8 * trainable
    model = instantiate({k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k != "task"})
    projected, _ = split_params(model, optimizer["target_modules"])
    low = sum(state_bytes_formula(p.shape, optimizer["rank"], optimizer["proj_type"], optimizer["basis"])
              for _, p in projected)
    return low + 8 * (trainable - sum(p.numel() for _, p in projected))


def row(name: str, summary: dict | None, problem: str, overrides: list[str]) -> dict:
    if summary is None:
        return {"job": name, "status": "FAIL", "note": problem or "the run failed (see the log)"}
    throughput = summary["throughput"]
    state, formula = summary["optimizer_state_bytes"], state_formula(overrides, summary["trainable_params"])
    state_ok = abs(state - formula) <= 0.01 * formula
    note = problem or ("" if state_ok else f"state {state / MIB:.2f} MiB != formula {formula / MIB:.2f} MiB")
    return {"job": name, "status": "ok" if not note else "FAIL", "val_loss": summary["metrics"]["final"].get("val/loss"),
            "tokens_per_second": throughput.get("tokens_per_second", 0.0), "step_ms": throughput.get("step_ms") or
            summary["metrics"]["other"].get("step_ms", 0.0), "peak_gib": summary["peak_memory_bytes"] / GIB,
            "state_mib": state / MIB, "formula_mib": formula / MIB, "note": note}


def table(rows: list[dict], gpu: bool) -> str:
    """One line per job; on a CPU the peak is the process's (cumulative) RSS, so it is not compared."""
    adamw = next((r for r in rows if r["job"] == "adamw" and r["status"] == "ok"), None)
    lines = [f"{'job':16} {'status':6} {'val loss':>8} {'tokens/s':>10} {'step ms':>8} {'peak GiB':>8} "
             f"{'state MiB':>9} {'formula':>8} {'tok/s÷AdamW':>12} {'peak÷AdamW':>11}  note"]
    for r in rows:
        if r["status"] != "ok" and "tokens_per_second" not in r:
            lines.append(f"{r['job']:16} {r['status']:6} {'':>8} {'':>10} {'':>8} {'':>8} {'':>9} {'':>8} {'':>12} "
                         f"{'':>11}  {r['note']}")
            continue
        speed = peak = ""
        if adamw is not None and r["job"] != "adamw" and not r["job"].startswith(("preset", "fsdp2")):
            ratio, mem = r["tokens_per_second"] / adamw["tokens_per_second"], r["peak_gib"] / adamw["peak_gib"]
            low_rank = r["job"].startswith(LOW_RANK)
            speed = f"{ratio:.2f}" + ((" ✓" if ratio >= 0.8 else " ✗ <0.8") if low_rank else "")
            peak = f"{mem:.2f}" + ((" ✓" if mem <= 1.0 else " ✗ >1") if low_rank else "") if gpu else "-"
        loss = f"{r['val_loss']:.4f}" if isinstance(r.get("val_loss"), float) and math.isfinite(r["val_loss"]) else "-"
        lines.append(f"{r['job']:16} {r['status']:6} {loss:>8} {r['tokens_per_second']:>10.0f} {r['step_ms']:>8.1f} "
                     f"{r['peak_gib']:>8.2f} {r['state_mib']:>9.2f} {r['formula_mib']:>8.2f} {speed:>12} {peak:>11}  "
                     f"{r['note']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="shrink every job so that the check runs on a CPU")
    parser.add_argument("--out", default="outputs/gpu_check", help="where the runs and the log go (emptied first)")
    args = parser.parse_args(argv)
    import shutil

    import torch

    from lrlab import smoke

    os.environ.setdefault("CI", "true")  # no progress bars
    logging.getLogger("lightning").setLevel(logging.WARNING)
    if not args.cpu and not torch.cuda.is_available():
        print("error: gpu_check: no CUDA device (torch.cuda.is_available() is False): run with --cpu", file=sys.stderr)
        return 2
    scale = CPU if args.cpu else GPU
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    corpus = smoke.local_corpus(out / "corpus")
    started, rows = time.perf_counter(), []
    jobs = {**llama_jobs(corpus, scale), **preset_jobs(corpus, scale)}
    with (out / "gpu_check.log").open("w") as log:
        for name, overrides in jobs.items():
            begun = time.perf_counter()
            if name.endswith("_resume"):
                summary, problem = resumed_equal(name, overrides, scale.split, out / "resume", log)
                rows.append(row(name, summary, problem, overrides))
                if rows[-1]["status"] == "ok":
                    rows[-1]["note"] = f"resumed at step {scale.split} (between refreshes): weights equal"
            else:
                rows.append(row(name, train(name, overrides, out, log), "", overrides))
            print(f"{name}: {rows[-1]['status']} ({time.perf_counter() - begun:.0f} s)", file=sys.stderr, flush=True)
    device = "cpu (--cpu miniature)" if args.cpu else torch.cuda.get_device_name(0)
    print(f"gpu_check on {device}, {time.perf_counter() - started:.0f} s; log: {out / 'gpu_check.log'}")
    print(table(rows, gpu=not args.cpu))
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
