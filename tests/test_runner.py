"""The runner end to end: compose, instantiate, fit, summary, resume, determinism."""

import csv
import json
import math
import os
import re
import signal
from pathlib import Path

import pytest
import torch

from lrlab.errors import ConfigError
from lrlab.train import TrainingFailed, run

SUMMARY_KEYS = {"status", "error", "metrics", "optimizer_state_bytes", "optimizer_state_bytes_by_group",
                "trainable_params", "total_params", "peak_memory_bytes", "throughput", "wall_seconds",
                "steps", "seed", "config_hash", "git_sha", "versions"}
DIGITS = "experiment=baseline/digits_mlp_adamw"
TINY_LM = ["experiment=baseline/llama_tiny_adamw", "data.max_tokens=60000", "data.seq_len=64"]


def test_digits_smoke_writes_summary(make_cfg, tmp_path):
    summary = run(make_cfg(DIGITS, "debug=smoke"))
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert set(on_disk) == SUMMARY_KEYS
    assert on_disk["status"] == "completed" and on_disk["steps"] == 6
    assert {"val/acc", "val/ece", "val/nll"} <= set(on_disk["metrics"]["final"])
    assert on_disk["throughput"]["samples_per_second"] > 0
    assert set(on_disk["versions"]) == {"torch", "lightning", "hydra", "python"}
    # Adam keeps exp_avg and exp_avg_sq (fp32) per parameter plus a scalar step.
    n_params = summary["trainable_params"]
    assert summary["optimizer_state_bytes"] >= 2 * 4 * n_params
    assert sum(summary["optimizer_state_bytes_by_group"]) == summary["optimizer_state_bytes"]
    assert (tmp_path / "run" / "config.yaml").exists()



def test_best_metric_is_the_lowest_loss_and_the_highest_score():
    """`metrics.best` keeps the smallest loss, perplexity, NLL and ECE, and the largest of the rest."""
    from lrlab.callbacks.summary import _better

    for name in ("val/loss", "val/ppl", "val/nll", "val/ece"):
        assert _better(name, 0.5, 0.7) and not _better(name, 0.7, 0.5)
    assert _better("val/acc", 0.7, 0.5) and not _better("val/acc", 0.5, 0.7)

def test_llama_tiny_smoke_reports_tokens(make_cfg):
    summary = run(make_cfg(*TINY_LM, "debug=smoke"))
    assert summary["status"] == "completed"
    assert summary["throughput"]["tokens_per_second"] > 0
    assert summary["metrics"]["final"]["val/ppl"] > 1


def test_digits_learns(make_cfg):
    summary = run(make_cfg(DIGITS, "trainer.max_steps=150", "trainer.val_check_interval=150"))
    assert summary["metrics"]["final"]["val/acc"] > 0.9


def _train_losses(run_dir: Path) -> dict[int, float]:
    rows = csv.DictReader(open(run_dir / "csv" / "metrics.csv"))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("base, n", [([DIGITS], 6), ([DIGITS], 22), ([DIGITS], 30), (TINY_LM, 6)],
                         ids=["digits_mid_epoch", "digits_epoch_end", "digits_next_epoch", "llama_tiny"])
def test_resume_matches_straight_run(make_cfg, tmp_path, base, n):
    """2N steps straight == N steps, then resume from the step-N checkpoint, then N more
    (digits has 22 batches an epoch: the checkpoint lands mid-epoch, on its last batch, and in the next)."""
    common = [*base, f"trainer.max_steps={2 * n}", "trainer.val_check_interval=4", "trainer.log_every_n_steps=1",
              f"callbacks.checkpoint.every_n_train_steps={n}", "callbacks.checkpoint.save_top_k=-1"]
    run(make_cfg(*common, run="straight", logger="csv"))
    straight = tmp_path / "straight"
    mid = straight / "checkpoints" / f"step{n:06d}.ckpt"
    run(make_cfg(*common, f"ckpt_path={mid}", run="resumed", logger="csv"))
    resumed = tmp_path / "resumed"
    a, b = _state(straight / "checkpoints" / "last.ckpt"), _state(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 2 * n
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    losses_a, losses_b = _train_losses(straight), _train_losses(resumed)
    later = [s for s in losses_a if s >= n]
    assert later and all(losses_a[s] == losses_b[s] for s in later)


def test_same_seed_same_curve(make_cfg):
    first = run(make_cfg(DIGITS, "debug=smoke", run="a"))
    second = run(make_cfg(DIGITS, "debug=smoke", run="b"))
    assert first["metrics"]["final"] == second["metrics"]["final"]
    third = run(make_cfg(DIGITS, "debug=smoke", "seed=1", run="c"))
    assert third["metrics"]["final"] != first["metrics"]["final"]


@pytest.mark.parametrize("switch, on", [("true", True), ("false", False)])
def test_one_switch_governs_deterministic_algorithms(make_cfg, switch, on, monkeypatch):
    """`deterministic` alone decides: the Trainer no longer turns the algorithms off again, and
    deterministic cuBLAS gets its workspace setting."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        run(make_cfg(DIGITS, "debug=smoke", f"deterministic={switch}"))
        assert torch.are_deterministic_algorithms_enabled() is on
        assert (os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8") is on
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_checkpoint_loads_weights_only(make_cfg, tmp_path):
    run(make_cfg(*TINY_LM, "debug=smoke"))
    state = _state(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert state["optimizer_states"] and state["global_step"] == 6


def test_non_finite_loss_fails_with_step(make_cfg, tmp_path):
    cfg = make_cfg(DIGITS, "debug=smoke", "optimizer.lr=1e30", "trainer.gradient_clip_val=null")
    with pytest.raises(TrainingFailed, match=r"at step \d+"):
        run(cfg)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


@pytest.mark.parametrize("message, recorded", [("bad batch at step 2\nsecond line", "bad batch at step 2"),
                                               ("  ", "ValueError")])
def test_an_unexpected_error_is_recorded_by_its_first_line(make_cfg, tmp_path, monkeypatch, message, recorded):
    """An error the runner does not handle itself still leaves a summary: status failed, and its
    message's first line (or, for an empty message, the error's type) as the reason."""
    from lrlab.tasks.classify import ClassifyTask

    def fail(self, batch, batch_idx):
        raise ValueError(message)

    monkeypatch.setattr(ClassifyTask, "training_step", fail)
    with pytest.raises(ValueError):
        run(make_cfg(DIGITS, "debug=smoke"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == recorded


def _csv_values(run_dir: Path, key: str) -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv") as rows:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(rows) if r.get(key)]


def _tensorboard_values(run_dir: Path, key: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(key)]


def _wandb_values(run_dir: Path, key: str) -> list[float]:
    """The values of `key` in the offline run file of the run id kept in `wandb_id`. Each history
    item is a protobuf message: the key, then field 16 (tag bytes 0x82 0x01), the length of its
    JSON value, the value. A record is written once as partial and once as full history."""
    run_id = (run_dir / "wandb_id").read_text().strip()
    (record_file,) = (run_dir / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data = record_file.read_bytes()
    values = []
    for found in re.finditer(re.escape(key.encode()) + rb"\x82\x01", data):
        length = data[found.end()]
        values.append(float(data[found.end() + 1:found.end() + 1 + length]))
    return values


LOGGER_DIRS = {"csv", "tensorboard", "wandb"}  # each logger writes under <run dir>/<its name>


@pytest.mark.parametrize("group", ["tensorboard", "wandb", "csv"])
def test_loggers(make_cfg, tmp_path, group, monkeypatch):
    """6 steps, validation after steps 3 and 6: the chosen logger (and no other) holds train/loss of
    every step and val/acc of both validations, the last one and the best one those of the summary."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    summary = run(make_cfg(DIGITS, "debug=smoke", logger=group))
    run_dir = tmp_path / "run"
    assert {p.name for p in run_dir.iterdir()} & LOGGER_DIRS == {group}
    final, best = summary["metrics"]["final"]["val/acc"], summary["metrics"]["best"]["val/acc"]
    if group == "wandb":
        accs = _wandb_values(run_dir, "val/acc")
        assert len(accs) == 4 and accs[0::2] == accs[1::2]  # two validations, each partial + full
        assert len(_wandb_values(run_dir, "train/loss")) == 12
        accs = accs[0::2]
    else:
        values = _csv_values if group == "csv" else _tensorboard_values
        assert [step for step, _ in values(run_dir, "train/loss")] == list(range(6))
        steps, accs = zip(*values(run_dir, "val/acc"))
        assert list(steps) == [2, 5]
    assert accs[-1] == pytest.approx(final, abs=1e-7) and max(accs) == pytest.approx(best, abs=1e-7)


def test_no_logger_writes_no_log(make_cfg, tmp_path):
    run(make_cfg(DIGITS, "debug=smoke", logger="none"))
    assert not {p.name for p in (tmp_path / "run").iterdir()} & LOGGER_DIRS


@pytest.mark.parametrize("base", [[DIGITS], TINY_LM, ["experiment=baseline/digits_mlp_adamw", "model=cnn"]],
                         ids=["classify_mlp", "causal_lm", "classify_cnn"])
def test_fast_dev_run_each_task(make_cfg, base):
    summary = run(make_cfg(*base, "debug=fdr"))
    assert summary["status"] == "completed" and summary["steps"] == 1


def test_claims_grid_reuses_completed_runs(tmp_path):
    from lrlab.report.claims import first_step, last_logged, run_grid

    grid = {"digits": [DIGITS, "debug=smoke", "logger=none"]}
    first = run_grid(grid, [0], str(tmp_path), progress=lambda _: None)["digits"][0]
    summary = tmp_path / "digits" / "seed0" / "summary.json"
    written = summary.stat().st_mtime_ns
    again = run_grid(grid, [0], str(tmp_path), progress=lambda _: None)["digits"][0]
    assert again == first and summary.stat().st_mtime_ns == written
    assert first_step(first, "val/acc", 0.0) == 3  # the first validation, after 3 steps
    assert 0.0 <= last_logged(first, "train/loss") < 10 and math.isnan(last_logged(first, "no/such")) and math.isnan(first_step(first, "val/acc", 1.1))
    changed = {"digits": [DIGITS, "debug=smoke", "logger=none", "optimizer.lr=0.5"]}
    with pytest.raises(ConfigError, match="holds a run of another config"):
        run_grid(changed, [0], str(tmp_path), progress=lambda _: None)


def test_claims_mean_std_skips_unreached_and_prints_counts():
    from lrlab.report.claims import mean_std

    nan = float("nan")
    assert mean_std([40.0, 50.0, nan]) == "45 ± 7.1 (2/3)"
    assert mean_std([nan, nan]) == "— (0/2)"
    assert mean_std([91053, 91053]) == "91,053" and mean_std([0.5]) == "0.5"


def test_claims_labels_differing_only_in_symbols_get_their_own_folders():
    from lrlab.report.claims import folder_names

    names = folder_names({"CE + AdamW, wd 0": [], "CE + ⊥AdamW, wd 0": [], "ELR (β 0.7)": []})
    assert names["CE + AdamW, wd 0"] == "CE_AdamW_wd_0" and names["ELR (β 0.7)"] == "ELR_0.7_"
    assert names["CE + ⊥AdamW, wd 0"].startswith("CE_AdamW_wd_0_") and len(set(names.values())) == 3


def test_sigterm_between_steps_still_checkpoints(make_cfg, tmp_path, monkeypatch):
    """A SIGTERM that lands after the interrupt callback ran for a step (while Lightning finishes
    that step or validates) must still end in last.ckpt and status "interrupted"."""
    from lrlab.callbacks.interrupt import GracefulInterrupt

    original = GracefulInterrupt.on_train_batch_end

    def batch_end_then_signal(self, trainer, *args):
        original(self, trainer, *args)
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(GracefulInterrupt, "on_train_batch_end", batch_end_then_signal)
    summary = run(make_cfg(DIGITS, "trainer.max_steps=50", "trainer.val_check_interval=3"))
    assert summary["status"] == "interrupted" and summary["steps"] == 4
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


def _scontrol(tmp_path, monkeypatch, exit_code: int) -> Path:
    """A stand-in `scontrol` first on PATH: it records its arguments and exits with `exit_code`."""
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {log}\necho 'job not found' >&2\nexit {exit_code}\n")
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_requeue_asks_slurm_to_requeue_the_job(tmp_path, monkeypatch, capsys):
    from lrlab.callbacks.interrupt import requeue

    log = _scontrol(tmp_path, monkeypatch, 0)
    requeue("4242")
    assert log.read_text().split() == ["requeue", "4242"] and capsys.readouterr().err == ""


def test_a_failed_requeue_warns_with_slurms_reason(tmp_path, monkeypatch, capsys):
    from lrlab.callbacks.interrupt import requeue

    _scontrol(tmp_path, monkeypatch, 1)
    requeue("4242")
    assert capsys.readouterr().err == ("warning: scontrol requeue 4242 failed (job not found): "
                                       "continue it with resume=auto\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no scontrol at all
    requeue("4242")
    err = capsys.readouterr().err
    assert err.startswith("warning: scontrol requeue 4242 failed (") and "scontrol" in err.split("(", 1)[1]


def test_a_keyboard_interrupt_ends_the_run_as_interrupted(make_cfg, tmp_path, monkeypatch):
    """A second Ctrl-C raises KeyboardInterrupt at once (Lightning then exits with status 1): the
    summary still says "interrupted", at the step reached."""
    from lrlab.callbacks.interrupt import GracefulInterrupt

    def interrupt_at_step_3(self, trainer, *args):
        if trainer.global_step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(GracefulInterrupt, "on_train_batch_end", interrupt_at_step_3)
    with pytest.raises(SystemExit):
        run(make_cfg(DIGITS, "trainer.max_steps=50"))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"] is None and summary["steps"] == 3
