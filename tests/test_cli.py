"""The `lrlab` command line: listing, showing, validating, bad input, multirun, DDP, signals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

DIGITS_SMOKE = ["experiment=baseline/digits_mlp_adamw", "debug=smoke", "logger=none"]


def lrlab(*args, cwd, timeout=300, **kwargs):
    env = {**os.environ, "CI": "true"}
    return subprocess.run([sys.executable, "-m", "lrlab.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


def test_ls_lists_groups_and_presets(cli):
    code, out, _ = cli("ls")
    assert code == 0
    for expected in ("model:", "llama_tiny", "data:", "stdlib_bytes", "experiment:", "baseline/digits_mlp_adamw"):
        assert expected in out
    code, out, _ = cli("ls", "optimizer")
    assert code == 0 and "adamw" in out and "model:" not in out


def test_show_resolves(cli):
    code, out, _ = cli("show", "experiment=baseline/digits_mlp_adamw", "optimizer.lr=0.5")
    assert code == 0 and "lr: 0.5" in out and "_target_: lrlab.models.classifier.mlp" in out
    assert "${" not in out


def test_validate_every_preset(cli):
    code, out, err = cli("validate")
    assert code == 0, out + err
    assert "BROKEN" not in out and "baseline/llama_tiny_adamw" in out


def test_unknown_option_lists_the_allowed_ones(cli):
    code, _, err = cli("show", "model=no_such_model")
    assert code == 2 and err.startswith("error: model=no_such_model: one of ") and "llama_tiny" in err
    assert "search path" not in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("show", "experiment=galore/no_such_preset")
    assert code == 2 and "experiment=galore/no_such_preset" in err and "lrlab ls experiment" in err


@pytest.mark.slow
def test_listing_into_a_closed_pipe_ends_quietly():
    listing = subprocess.Popen([sys.executable, "-m", "lrlab.cli", "ls"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    listing.stdout.close()  # the reader is gone before anything is written (`lrlab ls | head -0`)
    err = listing.stderr.read().decode()
    assert listing.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err


def test_unreadable_checkpoint(cli, tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = cli("train", *DIGITS_SMOKE, f"ckpt_path={junk}")
    assert code == 2 and "ckpt_path" in err and "unreadable" in err


def test_finished_run_is_never_overwritten(cli, tmp_path):
    code, out, err = cli("train", *DIGITS_SMOKE, "run_name=keep")
    assert code == 0, err
    summary = tmp_path / "outputs" / "runs" / "keep" / "summary.json"
    before = summary.read_text()
    config_before = (tmp_path / "outputs" / "runs" / "keep" / ".hydra" / "config.yaml").read_text()
    code, _, err = cli("train", *DIGITS_SMOKE, "run_name=keep", "optimizer.lr=0.5")
    assert code == 2 and "resume=auto" in err
    assert summary.read_text() == before
    assert (tmp_path / "outputs" / "runs" / "keep" / ".hydra" / "config.yaml").read_text() == config_before


@pytest.mark.slow
def test_multirun_grid_gives_each_job_its_own_dir(tmp_path):
    done = lrlab("train", "-m", *DIGITS_SMOKE, "optimizer.lr=1e-3,3e-3", "run_name=grid", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    summaries = sorted((tmp_path / "outputs" / "multiruns" / "grid").glob("*/summary.json"))
    assert len(summaries) == 2
    overrides = [(s.parent / ".hydra" / "overrides.yaml").read_text() for s in summaries]
    assert "optimizer.lr=0.001" in overrides[0] and "optimizer.lr=0.003" in overrides[1]
    assert all(json.loads(s.read_text())["status"] == "completed" for s in summaries)
    table = lrlab("report", "outputs/multiruns/grid", cwd=tmp_path)
    assert table.returncode == 0 and table.stdout.count("optimizer.lr=") == 2 and "val/acc" in table.stdout
    hashes = {json.loads(s.read_text())["config_hash"] for s in summaries}
    assert len(hashes) == 2


@pytest.mark.slow
def test_multirun_grid_goes_on_past_a_failing_job(tmp_path):
    """Job 1 diverges (SGD at lr 1e30): it is recorded as failed with its reason, jobs 0 and 2
    still run, and the grid ends non-zero with a one-line summary."""
    done = lrlab("train", "-m", *DIGITS_SMOKE, "optimizer=sgd", "trainer.gradient_clip_val=null",
                 "optimizer.lr=1e-3,1e30,3e-3", "run_name=grid", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("2 of 3 jobs completed; failed: job 1 (optimizer.lr=1e+30: loss is nan at step"), last
    statuses = [json.loads((tmp_path / "outputs" / "multiruns" / "grid" / str(job) / "summary.json").read_text())
                for job in range(3)]
    assert [s["status"] for s in statuses] == ["completed", "failed", "completed"]
    assert "loss is nan" in statuses[1]["error"] and statuses[0]["error"] is None


@pytest.mark.slow
def test_second_run_into_a_busy_run_dir_is_refused(cli, tmp_path):
    """A lock file in the run dir: while one run holds it, a second `lrlab train` with the same
    run_name (resume=auto or not) stops with one line and writes nothing there."""
    args = ["experiment=baseline/digits_mlp_adamw", "logger=none", "run_name=busy", "trainer.max_steps=100000",
            "trainer.val_check_interval=1000"]
    first = subprocess.Popen([sys.executable, "-m", "lrlab.cli", "train", *args], cwd=tmp_path,
                             env={**os.environ, "CI": "true"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_dir = tmp_path / "outputs" / "runs" / "busy"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (run_dir / "config.yaml").exists():
            time.sleep(0.2)
        config = (run_dir / "config.yaml").read_text()
        for extra in ([], ["resume=auto"]):
            code, _, err = cli("train", *args, "optimizer.lr=0.5", *extra)
            lines = err.strip().splitlines()
            assert code == 2 and len(lines) == 1, err[-2000:]
            assert lines[0].startswith("error: run_name='busy': ") and f"in use by lrlab process {first.pid}" in lines[0]
        assert (run_dir / "config.yaml").read_text() == config and "lr: 0.5" not in config
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "interrupted"


@pytest.mark.slow
def test_ddp_spawn_two_processes(tmp_path):
    done = lrlab("train", *DIGITS_SMOKE, "trainer=ddp_spawn", "run_name=ddp", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs" / "runs" / "ddp" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_checkpoints_then_resume_continues(tmp_path, sig):
    args = ["experiment=baseline/digits_mlp_adamw", "logger=csv", "run_name=sig", "trainer.max_steps=100000",
            "trainer.val_check_interval=50"]
    env = {**os.environ, "CI": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "lrlab.cli", "train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "outputs" / "runs" / "sig" / "csv" / "metrics.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    run_dir = tmp_path / "outputs" / "runs" / "sig"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted", err[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    stopped_at = summary["steps"]
    done = lrlab("train", *args[:-2], "resume=auto", f"trainer.max_steps={stopped_at + 5}",
                 "trainer.val_check_interval=5", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "completed" and resumed["steps"] == stopped_at + 5


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_relaunching_strategies_two_processes(tmp_path, strategy):
    """`ddp` and `fsdp2` re-launch the CLI once per rank; both ranks must agree and finish."""
    done = lrlab("train", "debug=smoke", "logger=none", "data.max_tokens=40000", f"trainer={strategy}",
                 "trainer.accelerator=cpu", f"run_name={strategy}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs" / "runs" / strategy / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert done.stdout.count("status") == 1  # only rank 0 reports
