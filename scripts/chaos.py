"""Kill -9 a tiny `lrlab train` at chosen and random moments, resume it, and check nothing is lost.

Each trial trains llama_tiny for 40 steps (validation every 10, a checkpoint every 5) through
the CLI with `resume=auto`, SIGKILLs it once in each phase (a training step, a validation, a
checkpoint write, between the last checkpoint and the summary, a random moment), and resumes
it after each kill until it completes. After every kill: each checkpoint on disk must load with
`weights_only=True` and hold finite values, and `summary.json`, where present, must parse. A
kill counts as survived when the next segment resumes and the trial completes; at the end the
final parameters are compared (torch.equal) with an uninterrupted run. The outputs go once on
the filesystem of the temp dir and once on /dev/shm (tmpfs: another filesystem).

The phase of the run is read from a marker file that `PhaseMarker` (a callback added with
`+callbacks.phase=...`) writes as the run enters each phase; the kill lands a random few
milliseconds into it, and a checkpoint kill lands as soon as the checkpoint's temp file appears
(the log says when a kill left one half written). The marker pauses 1 s between the last
checkpoint and the summary write, so that the "end" kill lands there.

    python scripts/chaos.py --trials 4 --out /tmp/chaos
"""

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

PHASES = ("train", "validation", "checkpoint", "random", "end")
CONFIG = ["data.max_tokens=40000", "data.seq_len=64", "trainer.max_steps=40", "trainer.val_check_interval=10",
          "trainer.limit_val_batches=10", "callbacks.checkpoint.every_n_train_steps=5", "logger=csv",
          "trainer.enable_progress_bar=false"]


class PhaseMarker(L.Callback):
    """Writes the phase the run enters to `path` (train, validation, checkpoint, end)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def _mark(self, phase: str) -> None:
        self.path.write_text(phase)

    def on_train_batch_start(self, *args) -> None:
        self._mark("train")

    def on_validation_start(self, *args) -> None:
        self._mark("validation")

    def on_save_checkpoint(self, *args) -> None:
        self._mark("checkpoint")

    def on_fit_end(self, *args) -> None:
        """Runs after the last checkpoint and before the summary is written (lrlab's own callbacks
        come last); the pause holds that window open long enough for the kill to land in it."""
        self._mark("end")
        time.sleep(1.0)


def launch(outputs: Path, name: str, marker: Path, extra: list[str] = ()) -> subprocess.Popen:
    env = {**os.environ, "LRLAB_OUTPUT_DIR": str(outputs), "CI": "true",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    args = [*CONFIG, f"run_name={name}", "resume=auto", "+callbacks.phase._target_=chaos.PhaseMarker",
            f"+callbacks.phase.path={marker}", *extra]
    return subprocess.Popen([sys.executable, "-m", "lrlab.cli", "train", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_in(proc: subprocess.Popen, marker: Path, phase: str, rng: random.Random, checkpoints: Path,
            timeout: float = 300) -> bool:
    """SIGKILL `proc` a few ms into `phase` ("random": anywhere after start-up; "checkpoint": as
    soon as the checkpoint's temp file appears, i.e. mid-write); False if it finished first."""
    marker.unlink(missing_ok=True)
    deadline = time.time() + timeout
    if phase == "random":
        while time.time() < deadline and proc.poll() is None and not marker.exists():
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 4))
    else:
        while time.time() < deadline and proc.poll() is None:
            try:
                if marker.read_text() == phase:
                    break
            except OSError:
                pass
            time.sleep(0.001)
        if phase == "checkpoint":
            until = time.time() + 0.5
            while time.time() < until and not list(checkpoints.glob(".*.partial")):
                time.sleep(0.0005)
        time.sleep(rng.uniform(0, 0.002 if phase == "checkpoint" else 0.02))
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


def damaged(run_dir: Path) -> list[str]:
    """What a kill broke: checkpoints that do not load or hold non-finite values, an unparsable summary."""
    import torch

    from lrlab.callbacks.checkpoint import non_finite

    broken = []
    for path in sorted((run_dir / "checkpoints").glob("*.ckpt")):
        try:
            if non_finite(torch.load(path, map_location="cpu", weights_only=True)):
                broken.append(f"{path.name}: non-finite")
        except Exception as err:  # any failure to load is damage
            broken.append(f"{path.name}: {type(err).__name__}")
    summary = run_dir / "summary.json"
    if summary.exists():
        try:
            json.loads(summary.read_text())
        except ValueError:
            broken.append("summary.json: unparsable")
    return broken


def finish(outputs: Path, name: str, marker: Path) -> subprocess.CompletedProcess:
    proc = launch(outputs, name, marker)
    _, err = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def same_params(a: Path, b: Path) -> bool:
    import torch

    first = torch.load(a, map_location="cpu", weights_only=True)["state_dict"]
    second = torch.load(b, map_location="cpu", weights_only=True)["state_dict"]
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def trial(outputs: Path, name: str, reference: Path, rng: random.Random, log) -> dict:
    marker = outputs / f".{name}.phase"
    run_dir = outputs / "runs" / name
    kills = {phase: [0, 0] for phase in PHASES}  # survived, total
    mid_write = 0
    for phase in PHASES:
        proc = launch(outputs, name, marker)
        if not kill_in(proc, marker, phase, rng, run_dir / "checkpoints"):
            log(f"  {name}: finished before a kill in {phase}")
            continue
        partial = list((run_dir / "checkpoints").glob(".*.partial")) if (run_dir / "checkpoints").is_dir() else []
        mid_write += bool(partial)
        before_summary = phase == "end" and (json.loads((run_dir / "summary.json").read_text()).get("status")
                                             if (run_dir / "summary.json").exists() else None) != "completed"
        broken = damaged(run_dir)
        kills[phase][1] += 1
        kills[phase][0] += not broken
        log(f"  {name}: killed in {phase}" + (" (a checkpoint half written)" if partial else "")
            + (" (before the summary was written)" if before_summary else "")
            + (f"; DAMAGE: {broken}" if broken else ""))
    done = finish(outputs, name, marker)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    completed = done.returncode == 0 and summary.get("status") == "completed" and summary.get("steps") == 40
    if not completed:
        log(f"  {name}: did not complete: {done.stderr.strip().splitlines()[-1:]}")
        kills = {phase: [0, total] for phase, (_, total) in kills.items()}
    equal = completed and same_params(run_dir / "checkpoints" / "last.ckpt", reference)
    return {"kills": kills, "completed": completed, "equal": equal, "mid_write": mid_write}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per filesystem (5 kills each)")
    parser.add_argument("--out", default=None, help="outputs on the temp dir's filesystem (default: a new temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    same_fs = Path(args.out or tempfile.mkdtemp(prefix="lrlab-chaos-"))
    other_fs = Path(tempfile.mkdtemp(prefix="lrlab-chaos-", dir="/dev/shm"))
    log = lambda line: print(line, flush=True)  # noqa: E731

    done = finish(same_fs, "reference", same_fs / ".reference.phase")
    assert done.returncode == 0, done.stderr[-2000:]
    reference = same_fs / "runs" / "reference" / "checkpoints" / "last.ckpt"
    rows = []
    for label, outputs in ((f"same filesystem as the temp dir ({same_fs})", same_fs), ("/dev/shm (tmpfs)", other_fs)):
        log(label)
        results = [trial(outputs, f"trial{i}", reference, rng, log) for i in range(args.trials)]
        by_phase = {p: [sum(r["kills"][p][i] for r in results) for i in (0, 1)] for p in PHASES}
        survived, total = sum(v[0] for v in by_phase.values()), sum(v[1] for v in by_phase.values())
        equal = sum(r["equal"] for r in results)
        log(f"  kills that left a checkpoint half written: {sum(r['mid_write'] for r in results)}")
        rows.append((label, survived, total, by_phase, equal, len(results)))
    shutil.rmtree(other_fs, ignore_errors=True)
    print("\n| outputs | kills survived | " + " | ".join(PHASES) + " | final params == uninterrupted |")
    print("|---|---|" + "---|" * len(PHASES) + "---|")
    for label, survived, total, by_phase, equal, trials in rows:
        cells = " | ".join(f"{s}/{t}" for s, t in by_phase.values())
        print(f"| {label.split(' (')[0]} | {survived}/{total} | {cells} | {equal}/{trials} |")


if __name__ == "__main__":
    main()
