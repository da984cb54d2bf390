"""Parallel jobs on one machine: the total throughput of N `lrlab train` jobs at once against one
job alone, measured side by side in one run.

Three settings, each a fresh `lrlab train` process per job (llama_tiny, stdlib bytes, AdamW,
the same steps; validation and checkpoints only at the end), interleaved over `--repeats`:
- `one job`: a single job with torch's default threads (one per core);
- `N jobs, own share`: N jobs at once, each with `threads=cores // N` (what lrlab gives each job
  wherever it runs several: `hydra/launcher=parallel`, `lrlab sweep sweep.n_jobs`, ...);
- `N jobs, default threads`: N jobs at once, each with one thread per core (no sharing).
A job's tokens/s is its summary's (timed steps after warm-up); the total of N jobs is their sum.
Target: `N jobs, own share` ≥ 1.0× `one job`.

    python scripts/bench_parallel.py [--jobs N] [--steps 150] [--repeats 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lrlab.parallel import THREAD_VARIABLES, cores, share


def jobs_at_once(count: int, threads: int | None, steps: int) -> float:
    """Start `count` jobs together; their summed tokens/s once all have finished."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["CI"] = "true"
    with tempfile.TemporaryDirectory() as tmp:
        processes = []
        for job in range(count):
            command = [sys.executable, "-m", "lrlab.cli", "train", "experiment=baseline/llama_tiny_adamw",
                       f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}",
                       "trainer.limit_val_batches=2", f"callbacks.checkpoint.every_n_train_steps={steps}",
                       "logger=none", f"run_name=job{job}", f"seed={job}",
                       *([f"threads={threads}"] if threads else [])]
            processes.append(subprocess.Popen(command, cwd=tmp, env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True))
        for process in processes:
            _, err = process.communicate()
            if process.returncode != 0:
                raise SystemExit(f"a job failed: {err[-2000:]}")
        summaries = [json.loads((Path(tmp) / "outputs" / "runs" / f"job{job}" / "summary.json").read_text())
                     for job in range(count)]
    return sum(s["throughput"]["tokens_per_second"] for s in summaries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=max(2, cores()))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    settings = {"one job": (1, None), f"{args.jobs} jobs, own share": (args.jobs, share(args.jobs)),
                f"{args.jobs} jobs, default threads": (args.jobs, None)}
    results: dict[str, list[float]] = {name: [] for name in settings}
    for repeat in range(args.repeats):  # interleaved, best of N, to damp machine noise
        for name, (count, threads) in settings.items():
            results[name].append(jobs_at_once(count, threads, args.steps))
            print(f"repeat {repeat}: {name}: {results[name][-1]:,.0f} tokens/s in total", flush=True)
    alone = max(results["one job"])
    print(f"cores: {cores()}, jobs: {args.jobs}, threads per job (own share): {share(args.jobs)}, "
          f"steps: {args.steps}, repeats: {args.repeats}")
    print(f"{'setting':<28}{'total tokens/s (best)':>22}{'× one job':>11}   all runs")
    for name, values in results.items():
        print(f"{name:<28}{max(values):>22,.0f}{max(values) / alone:>11.2f}   {[round(v) for v in values]}")


if __name__ == "__main__":
    main()
