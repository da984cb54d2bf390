"""DDP on CPU: tokens/s of 2 processes against 1, and the share of the step spent in the
gradient all-reduce; FSDP2 with a projection optimizer: the time and traffic of its projected step.

Each configuration is `lrlab.train.run` under torchrun (`trainer=ddp`, gloo) on llama_tiny with the
same per-process batch (weak scaling: 2 processes train a global batch twice as large). The
all-reduce is timed by a DDP communication hook that runs gloo's all-reduce synchronously and
adds up its wall time (so it does not overlap the backward pass here; the share is therefore an
upper bound of what the overlapped default costs). Validation is excluded (Throughput callback).

    OMP_NUM_THREADS=1 python scripts/bench_ddp.py [--steps 60] [--model llama_tiny] [--batch 16]

`--trainer fsdp2 --optimizer galore [--rank 32]` runs 2 processes under FSDP2 and reports, for
rank 0, the wall time of the projected weights' optimizer step (`LowRankAdamW.group_step` of the
group with `rank`, collectives included; median over the steps after the first 5, none of which
refreshes: `update_proj_gap` stays at its 200) and the fp32 values handed to collectives in it:
the gathered m·n of `DTensor.full_tensor`, the k of `all_reduce`, per step between refreshes and
at the refresh (step 0). Run it against an older checkout by putting that checkout's `src` first
on PYTHONPATH.
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


class ProjectedStepMeter:
    """Times the projected group's step and counts the values handed to collectives inside it."""

    def __init__(self):
        self.seconds, self.values, self.counting, self.moved = [], [], False, 0

    def install(self) -> None:
        from torch.distributed.tensor import DTensor

        from lrlab.optim.lowrank_adam import LowRankAdamW

        group_step, all_reduce, full_tensor = LowRankAdamW.group_step, dist.all_reduce, DTensor.full_tensor
        meter = self

        def timed_group_step(optimizer, group, params):
            if "rank" not in group:
                return group_step(optimizer, group, params)
            meter.counting, meter.moved = True, 0
            started = time.perf_counter()
            group_step(optimizer, group, params)
            meter.seconds.append(time.perf_counter() - started)
            meter.values.append(meter.moved)
            meter.counting = False

        def counted_all_reduce(tensor, *args, **kwargs):
            meter.moved += tensor.numel() if meter.counting else 0
            return all_reduce(tensor, *args, **kwargs)

        def counted_full_tensor(tensor, *args, **kwargs):
            whole = full_tensor(tensor, *args, **kwargs)
            meter.moved += whole.numel() if meter.counting else 0
            return whole

        LowRankAdamW.group_step, dist.all_reduce, DTensor.full_tensor = (timed_group_step, counted_all_reduce,
                                                                         counted_full_tensor)

    def summary(self, warmup: int = 5) -> dict:
        later = sorted(self.seconds[warmup:])
        return {"projected_step_ms": 1000 * later[len(later) // 2], "values_between_refreshes": self.values[-1],
                "values_at_refresh": self.values[0]}


def worker(out: str, model: str, batch: int, steps: int, trainer: str, optimizer: str, rank: int) -> None:
    from lrlab.console import quiet_libraries
    from lrlab.train import compose, run

    quiet_libraries()
    torch.set_num_threads(1)
    meter = ProjectedStepMeter()
    overrides = [f"model={model}", "data.seq_len=128", f"data.batch_size={batch}", "logger=none", f"trainer={trainer}",
                 "trainer.accelerator=cpu", f"trainer.devices={int(os.environ['WORLD_SIZE'])}",
                 f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1",
                 "callbacks.checkpoint.save_last=false", f"optimizer={optimizer}"]
    if trainer == "ddp":
        overrides += [f"+callbacks.timer._target_={__name__}.AllReduceTimer", f"+callbacks.timer.path={out}/allreduce.json"]
    else:
        overrides += [f"optimizer.rank={rank}"]
        meter.install()
    run(compose(overrides, run_dir=f"{out}/run"))
    if trainer != "ddp" and int(os.environ["RANK"]) == 0:
        Path(out, "projected.json").write_text(json.dumps(meter.summary()))


def launch(processes: int, args, out: str) -> dict:
    """Run the worker under torchrun; the run's summary."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", __file__,
                           "--worker", out, "--model", args.model, "--batch", str(args.batch), "--steps",
                           str(args.steps), "--trainer", args.trainer, "--optimizer", args.optimizer, "--rank",
                           str(args.rank)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads((Path(out) / "run" / "summary.json").read_text())


def measure(processes: int, args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        summary = launch(processes, args, out)
        timer = json.loads((Path(out) / "allreduce.json").read_text())
    throughput = summary["throughput"]
    step_seconds = (args.batch * 128 * processes) / throughput["tokens_per_second"]
    share = timer["allreduce_seconds"] / max(timer["steps"], 1) / step_seconds if processes > 1 else 0.0
    return {"processes": processes, "tokens_per_second": throughput["tokens_per_second"],
            "step_ms": 1000 * step_seconds, "allreduce_share": share}


def measure_projected(args) -> None:
    """FSDP2 on 2 processes: the projected step's time and collective traffic."""
    with tempfile.TemporaryDirectory() as out:
        summary = launch(2, args, out)
        meter = json.loads((Path(out) / "projected.json").read_text())
    step_ms = 1000 * (args.batch * 128 * 2) / summary["throughput"]["tokens_per_second"]
    print(f"{args.model}, FSDP2 on 2 processes, optimizer={args.optimizer} rank {args.rank}, seq 128, batch "
          f"{args.batch} per process, {args.steps} steps (first 5 excluded); rank 0:")
    print(f"  training step {step_ms:.1f} ms, projected optimizer step {meter['projected_step_ms']:.2f} ms (median)")
    print(f"  values handed to collectives in the projected step: {meter['values_between_refreshes']:,} per step "
          f"between refreshes, {meter['values_at_refresh']:,} at the refresh")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker")
    parser.add_argument("--model", default="llama_tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--trainer", choices=("ddp", "fsdp2"), default="ddp")
    parser.add_argument("--optimizer", default="adamw", help="with --trainer fsdp2: galore, fira, dct, ...")
    parser.add_argument("--rank", type=int, default=32, help="the projection rank (fsdp2)")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.model, args.batch, args.steps, args.trainer, args.optimizer, args.rank)
        return
    if args.trainer == "fsdp2":
        measure_projected(args)
        return
    rows = [measure(n, args) for n in (1, 2)]
    print(f"{args.model}, seq 128, batch {args.batch} per process, {args.steps} steps (first 5 excluded)")
    print(f"{'processes':>9} {'tokens/s':>10} {'step ms':>9} {'all-reduce share':>17}")
    for row in rows:
        print(f"{row['processes']:>9} {row['tokens_per_second']:>10,.0f} {row['step_ms']:>9.1f} "
              f"{row['allreduce_share']:>16.0%}")
    print(f"2 processes / 1: {rows[1]['tokens_per_second'] / rows[0]['tokens_per_second']:.2f}x tokens/s")


if __name__ == "__main__":
    main()
