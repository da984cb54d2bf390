"""DDP on CPU: tokens/s of 2 processes against 1, and the share of the step spent in the
gradient all-reduce.

Each configuration is `lrlab.train.run` under torchrun (`trainer=ddp`, gloo) on llama_tiny with the
same per-process batch (weak scaling: 2 processes train a global batch twice as large). The
all-reduce is timed by a DDP communication hook that runs gloo's all-reduce synchronously and
adds up its wall time (so it does not overlap the backward pass here; the share is therefore an
upper bound of what the overlapped default costs). Validation is excluded (Throughput callback).

    OMP_NUM_THREADS=1 python scripts/bench_ddp.py [--steps 60] [--model llama_tiny] [--batch 16]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist


class AllReduceTimer(L.Callback):
    """Registers the timing hook on the DDP model; writes seconds in all-reduce per step."""

    def __init__(self, path: str, warmup: int = 5):
        self.path, self.warmup = path, warmup
        self.state = {"seconds": 0.0, "counting": False}
        self.steps = 0

    def on_train_start(self, trainer, task):
        model = trainer.strategy.model
        if hasattr(model, "register_comm_hook"):
            model.register_comm_hook(self.state, timed_allreduce)

    def on_train_batch_start(self, trainer, task, batch, batch_idx):
        self.state["counting"] = trainer.global_step >= self.warmup
        self.steps += self.state["counting"]

    def on_train_end(self, trainer, task):
        if trainer.is_global_zero:
            Path(self.path).write_text(json.dumps({"allreduce_seconds": self.state["seconds"], "steps": self.steps}))


def timed_allreduce(state: dict, bucket):
    started = time.perf_counter()
    tensor = bucket.buffer().div_(dist.get_world_size())
    dist.all_reduce(tensor)
    if state["counting"]:
        state["seconds"] += time.perf_counter() - started
    future = torch.futures.Future()
    future.set_result(tensor)
    return future


def worker(out: str, model: str, batch: int, steps: int) -> None:
    from lrlab.console import quiet_libraries
    from lrlab.train import compose, run

    quiet_libraries()
    torch.set_num_threads(1)
    cfg = compose([f"model={model}", "data.seq_len=128", f"data.batch_size={batch}", "logger=none", "trainer=ddp",
                   "trainer.accelerator=cpu", f"trainer.devices={int(os.environ['WORLD_SIZE'])}",
                   f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1",
                   "callbacks.checkpoint.save_last=false", f"+callbacks.timer._target_={__name__}.AllReduceTimer",
                   f"+callbacks.timer.path={out}/allreduce.json"], run_dir=f"{out}/run")
    run(cfg)


def measure(processes: int, model: str, batch: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
        done = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                               __file__, "--worker", out, "--model", model, "--batch", str(batch),
                               "--steps", str(steps)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        summary = json.loads((Path(out) / "run" / "summary.json").read_text())
        timer = json.loads((Path(out) / "allreduce.json").read_text())
    throughput = summary["throughput"]
    step_seconds = (batch * 128 * processes) / throughput["tokens_per_second"]
    share = timer["allreduce_seconds"] / max(timer["steps"], 1) / step_seconds if processes > 1 else 0.0
    return {"processes": processes, "tokens_per_second": throughput["tokens_per_second"],
            "step_ms": 1000 * step_seconds, "allreduce_share": share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker")
    parser.add_argument("--model", default="llama_tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.batch, args.steps)
        return
    rows = [measure(n, args.model, args.batch, args.steps) for n in (1, 2)]
    print(f"{args.model}, seq 128, batch {args.batch} per process, {args.steps} steps (first 5 excluded)")
    print(f"{'processes':>9} {'tokens/s':>10} {'step ms':>9} {'all-reduce share':>17}")
    for row in rows:
        print(f"{row['processes']:>9} {row['tokens_per_second']:>10,.0f} {row['step_ms']:>9.1f} "
              f"{row['allreduce_share']:>16.0%}")
    print(f"2 processes / 1: {rows[1]['tokens_per_second'] / rows[0]['tokens_per_second']:.2f}x tokens/s")


if __name__ == "__main__":
    main()
