"""Checkpoints under faults: kill -9 while writing, a full disk, NaN, truncated files, planted
pickles, and the order of the last checkpoint and the last validation."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from lrlab.errors import ConfigError
from lrlab.train import TrainingFailed, run

DIGITS = ["experiment=baseline/digits_mlp_adamw", "debug=smoke"]  # 6 steps, validation and checkpoint every 3


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _all_finite(path: Path) -> bool:
    state = _load(path)
    tensors = list(state["state_dict"].values())
    for group in state["optimizer_states"]:
        tensors += [t for per_param in group["state"].values() for t in per_param.values() if torch.is_tensor(t)]
    return all(torch.isfinite(t).all() for t in tensors if t.is_floating_point())


def test_checkpoints_are_written_beside_their_destination(make_cfg, tmp_path, monkeypatch):
    """No byte goes through the temp dir, so a checkpoint is renamed into place on its own
    filesystem (a copy from /tmp to another filesystem is what a kill used to truncate)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no_such_tmp"))
    summary = run(make_cfg(*DIGITS))
    assert summary["status"] == "completed"
    assert _load(tmp_path / "run" / "checkpoints" / "last.ckpt")["global_step"] == 6


CHILD = """
import io, os, signal, sys, torch
from lrlab.train import compose, run
real_save, saves = torch.save, []

def save_then_die(obj, out, *args, **kwargs):
    saves.append(1)
    if len(saves) == 2 and not isinstance(out, io.BytesIO):  # the step-6 checkpoint: half of it, then kill -9
        buffer = io.BytesIO()
        real_save(obj, buffer)
        out.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    real_save(obj, out, *args, **kwargs)

torch.save = save_then_die
run(compose(sys.argv[2:], run_dir=sys.argv[1]))
"""


@pytest.mark.slow
def test_kill_during_a_checkpoint_write_keeps_the_previous_one(make_cfg, tmp_path):
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else tmp_path  # another filesystem than /tmp
    run_dir = Path(tempfile.mkdtemp(dir=shm, prefix="lrlab-test-"))
    try:
        args = [*DIGITS, "logger=none"]
        killed = subprocess.run([sys.executable, "-c", CHILD, str(run_dir), *args], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "CI": "true"})
        assert killed.returncode == -9, killed.stderr[-2000:]
        last = run_dir / "checkpoints" / "last.ckpt"
        assert _load(last)["global_step"] == 3  # the previous checkpoint, whole
        resumed = run(make_cfg(*args, "resume=auto", run=str(run_dir)))
        run(make_cfg(*args, run="straight"))
        assert resumed["status"] == "completed" and resumed["steps"] == 6
        a, b = _load(last)["state_dict"], _load(tmp_path / "straight" / "checkpoints" / "last.ckpt")["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not list(run_dir.rglob("*.partial"))
    finally:
        import shutil

        shutil.rmtree(run_dir, ignore_errors=True)


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(make_cfg, tmp_path, monkeypatch):
    import errno

    from lrlab.callbacks import checkpoint

    real_save, saves = torch.save, []

    def save_until_full(obj, out, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            out.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(out.name))
        real_save(obj, out, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    with pytest.raises(TrainingFailed, match="No space left on device.*run stopped; free space") as failed:
        run(make_cfg(*DIGITS))
    assert failed.value.exit_code == 2 and "last checkpoint: " in str(failed.value) and "(step 3)" in str(failed.value)
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert _load(last)["global_step"] == 3 and not list((tmp_path / "run").rglob("*.partial"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left" in summary["error"]
    assert run(make_cfg(*DIGITS, "resume=auto"))["status"] == "completed"


def test_nan_never_reaches_a_checkpoint_and_the_named_one_resumes(make_cfg, tmp_path):
    """SGD on llama_tiny, continued at lr 1e6 with no clipping: two steps later the parameters
    are inf/NaN at a checkpoint step. That checkpoint must be refused (last.ckpt stays at the
    last finite step), named in the error, and resume to the end with the sane lr."""
    common = ["data.max_tokens=40000", "data.seq_len=64", "debug=smoke", "optimizer=sgd", "optimizer.lr=0.05",
              "trainer.gradient_clip_val=null", "callbacks.checkpoint.every_n_train_steps=2",
              "callbacks.checkpoint.save_top_k=0"]
    assert run(make_cfg(*common))["status"] == "completed"
    with pytest.raises(TrainingFailed, match=r"non-finite values in state_dict\.model.* after step 8; run stopped: "
                                             r"resume from ckpt_path=\S+ \(step 6, finite\)") as failed:
        run(make_cfg(*common, "resume=auto", "trainer.max_steps=12", "optimizer.lr=1e6"))
    named = Path(str(failed.value).split("ckpt_path=")[1].split(" ")[0])
    assert _load(named)["global_step"] == 6 and _all_finite(named)
    assert all(_all_finite(p) for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and "after step 8" in summary["error"] and "step 6" in summary["error"]
    resumed = run(make_cfg(*common, f"ckpt_path={named}", "trainer.max_steps=12"))
    assert resumed["status"] == "completed" and resumed["steps"] == 12 and resumed["metrics"]["final"]["val/loss"] < 4


def test_resume_auto_passes_over_a_truncated_checkpoint(make_cfg, tmp_path, capsys):
    common = [*DIGITS, "callbacks.checkpoint.save_top_k=-1"]
    run(make_cfg(*common))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    summary = run(make_cfg(*common, "resume=auto", "trainer.max_steps=9"))
    assert summary["status"] == "completed" and summary["steps"] == 9
    assert "passed over last.ckpt" in capsys.readouterr().err
    resumes = [json.loads(line) for line in (tmp_path / "run" / "resumes.jsonl").read_text().splitlines()]
    assert resumes[-1]["checkpoint"].endswith("step000006.ckpt") and resumes[-1]["skipped"]


def test_resume_auto_without_a_readable_checkpoint_stops_and_keeps_the_summary(make_cfg, tmp_path):
    run(make_cfg(*DIGITS))
    folder = tmp_path / "run" / "checkpoints"
    for path in folder.glob("*.ckpt"):
        path.write_bytes(path.read_bytes()[:1000])
    summary = (tmp_path / "run" / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match="no readable checkpoint"):
        run(make_cfg(*DIGITS, "resume=auto", "trainer.max_steps=9"))
    assert (tmp_path / "run" / "summary.json").read_bytes() == summary


class _RunsCode:
    """Unpickling this writes a file: what a planted checkpoint could do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_resume_auto_never_unpickles_code(make_cfg, tmp_path, monkeypatch):
    marker = tmp_path / "code_ran"
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"global_step": 3, "payload": _RunsCode(str(marker))}, folder / "last.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ConfigError, match="no readable checkpoint.*last.ckpt"):
        run(make_cfg(*DIGITS, "resume=auto"))
    assert not marker.exists()


def test_last_checkpoint_comes_after_the_last_validation(make_cfg, tmp_path):
    """last.ckpt holds the final validation; a kill after it but before the summary is written
    leaves nothing stale: the resume writes the same final metrics and throughput."""
    summary = run(make_cfg(*DIGITS))
    saved = _load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("RunSummary"))
    assert state["final"] == summary["metrics"]["final"]
    (tmp_path / "run" / "summary.json").unlink()  # killed between the checkpoint and the summary
    again = run(make_cfg(*DIGITS, "resume=auto"))
    assert again["metrics"] == summary["metrics"] and again["throughput"] == summary["throughput"]
    assert again["status"] == "completed" and again["steps"] == 6


def test_non_finite_state_error_names_the_first_three_entries_and_counts_the_rest():
    from lrlab.callbacks.checkpoint import NonFiniteStateError

    assert str(NonFiniteStateError(7, ["a", "b"])) == "non-finite values in a, b after step 7"
    assert str(NonFiniteStateError(7, list("abcde"))) == "non-finite values in a, b, c and 2 more after step 7"


def test_checkpoint_io_loads_where_it_is_told(tmp_path):
    """`map_location` reaches torch.load (on the meta device the tensors hold no data); without it
    the tensors load where Lightning's default puts them, the CPU."""
    from lrlab.callbacks.checkpoint import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "c.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    assert io.load_checkpoint(path, map_location="meta")["state_dict"]["w"].device.type == "meta"
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], torch.ones(2))
