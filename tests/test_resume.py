"""Resuming: a finished run extended is the longer run straight; a completed run is left alone;
a resume that changes what is trained is refused; allowed changes are applied and recorded;
throughput, metrics history and logger runs continue across segments."""

import csv
import hashlib
import json
import re
from pathlib import Path

import pytest
import torch

from lrlab.errors import ConfigError
from lrlab.train import run

LM = ["model=llama_tiny", "optimizer=adamw", "scheduler=constant", "scheduler.warmup_ratio=0", "seed=7",
      "data.max_tokens=60000", "data.seq_len=64"]
DIGITS = ["experiment=baseline/digits_mlp_adamw"]
FLAT = ["scheduler=constant", "scheduler.warmup_ratio=0"]  # an lr schedule that does not depend on max_steps


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_params(a: Path, b: Path) -> bool:
    first, second = _load(a)["state_dict"], _load(b)["state_dict"]
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# (base overrides, N, the settings that place the split): 2N straight == N, then resume=auto to 2N
SPLITS = {
    "lm_not_a_checkpoint_no_validation": (LM, 7, ["trainer.val_check_interval=14"]),
    "lm_periodic_checkpoint": (LM, 7, ["trainer.val_check_interval=14", "callbacks.checkpoint.every_n_train_steps=7"]),
    "lm_validation_at_split": (LM, 7, ["trainer.val_check_interval=7"]),
    "lm_validation_not_at_split": (LM, 6, ["trainer.val_check_interval=4"]),
    "digits_epoch_end": ([*DIGITS, *FLAT], 22, ["trainer.val_check_interval=44"]),
    "galore_between_refreshes": (["experiment=galore/llama_tiny_cpu", "data.max_tokens=60000", "data.seq_len=64",
                                  "optimizer.update_proj_gap=4", "scheduler=constant", "scheduler.warmup_ratio=0"],
                                 6, ["trainer.val_check_interval=12"]),
    "elr_per_sample_state": ([*DIGITS, *FLAT, "regularizer=elr", "data.noise.kind=symmetric", "data.noise.rate=0.4"],
                             5, ["trainer.val_check_interval=10"]),
}


@pytest.mark.parametrize("case", list(SPLITS))
def test_extending_a_finished_run_continues_it_exactly(make_cfg, tmp_path, case):
    base, n, placing = SPLITS[case]
    common = [*base, *placing, "trainer.limit_val_batches=2"]
    straight = run(make_cfg(*common, f"trainer.max_steps={2 * n}", run="straight"))
    first = run(make_cfg(*common, f"trainer.max_steps={n}", run="split"))
    assert first["status"] == "completed" and first["steps"] == n
    extended = run(make_cfg(*common, f"trainer.max_steps={2 * n}", "resume=auto", run="split"))
    assert extended["status"] == "completed" and extended["steps"] == 2 * n
    assert extended["metrics"]["final"] == straight["metrics"]["final"]
    assert _same_params(tmp_path / "straight" / "checkpoints" / "last.ckpt",
                        tmp_path / "split" / "checkpoints" / "last.ckpt")


def test_resume_auto_on_a_completed_run_changes_nothing(make_cfg, tmp_path, capsys):
    cfg = [*DIGITS, "debug=smoke"]
    first = run(make_cfg(*cfg))
    files = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != ".lock"}
    again = run(make_cfg(*cfg, "resume=auto"))
    assert again == first and "is complete at step 6; summary.json unchanged" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in files} == files


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


REFUSED = {
    "model shape": ("model.hidden=[64,64]", "model.hidden"),
    "optimizer": ("optimizer=sgd", "optimizer._target_"),
    "optimizer setting": ("optimizer.betas=[0.8,0.99]", "optimizer.betas"),
    "regularizer": ("regularizer=elr", "regularizer.elr"),
    "adapter": ("adapter=lora", "adapter._target_"),
    "data": ("data.noise.rate=0.2", "data.noise.rate"),
    "seed": ("seed=3", "seed"),
    "batch size": ("data.batch_size=32", "data.batch_size"),
    "precision": ("trainer.precision=64-true", "trainer.precision"),
}


def test_resume_that_changes_what_is_trained_is_refused(make_cfg, tmp_path):
    cfg = [*DIGITS, "debug=smoke"]
    run(make_cfg(*cfg, "trainer.max_steps=3"))
    before = _digest(tmp_path / "run")
    for change, key in REFUSED.values():
        with pytest.raises(ConfigError, match=rf"resume='auto': the checkpoint \(step 3\) was trained with another "
                                              rf"config: .*{key.replace('.', chr(92) + '.')}[ .].*differ") as refused:
            run(make_cfg(*cfg, "resume=auto", change))
        assert len(str(refused.value).splitlines()) == 1
        assert _digest(tmp_path / "run") == before, change


def test_galore_rank_change_is_refused(make_cfg, tmp_path):
    cfg = ["experiment=galore/llama_tiny_cpu", "data.max_tokens=40000", "data.seq_len=64", "debug=smoke"]
    run(make_cfg(*cfg))
    with pytest.raises(ConfigError, match=r"optimizer\.rank \(\d+ -> 4\)"):
        run(make_cfg(*cfg, "resume=auto", "trainer.max_steps=9", "optimizer.rank=4"))


def test_allowed_changes_are_applied_and_recorded(make_cfg, tmp_path):
    """max_steps and lr change on resume: the cosine schedule is the one of the new length and
    the new lr (Lightning's restore would keep the old ones), and resumes.jsonl says so."""
    cfg = [*DIGITS, "debug=smoke", "scheduler=cosine", "scheduler.warmup_ratio=0"]
    run(make_cfg(*cfg))
    run(make_cfg(*cfg, "resume=auto", "trainer.max_steps=12", "optimizer.lr=0.01", "trainer.val_check_interval=4"))
    record = json.loads((tmp_path / "run" / "resumes.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 6 and record["changed"]["trainer.max_steps"] == [6, 12]
    assert record["changed"]["optimizer.lr"][1] == 0.01 and "trainer.val_check_interval" in record["changed"]
    state = _load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    scheduler = state["lr_schedulers"][0]
    assert scheduler["base_lrs"] == [0.01] * len(scheduler["base_lrs"])
    assert scheduler["lr_lambdas"][0]["total"] == 12 and scheduler["last_epoch"] == 12
    assert "max_steps: 12" in (tmp_path / "run" / "config.yaml").read_text()


def test_short_run_reports_the_throughput_it_measured(make_cfg):
    summary = run(make_cfg(*DIGITS, "trainer.max_steps=3", "trainer.val_check_interval=3"))
    assert summary["throughput"]["samples_per_second"] > 0 and summary["throughput"]["measured_steps"] == 3
    assert summary["metrics"]["other"]["step_ms"] > 0


def _csv_losses(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "csv" / "metrics.csv") as rows:
        return [(int(r["step"]), float(r["train/loss"])) for r in csv.DictReader(rows) if r.get("train/loss")]


def _tensorboard_losses(run_dir: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, round(e.value, 5)) for e in events.Scalars("train/loss")]


@pytest.mark.parametrize("logger, history", [("csv", _csv_losses), ("tensorboard", _tensorboard_losses)])
def test_metric_history_survives_resume(make_cfg, tmp_path, logger, history):
    """6 steps, then a resume from the step-3 checkpoint (the segment after it is redone, as
    after a kill) to 9: every step is logged once, with the straight run's values."""
    cfg = [*DIGITS, *FLAT, "debug=smoke", "callbacks.checkpoint.save_top_k=-1"]
    run(make_cfg(*cfg, "trainer.max_steps=9", run="straight", logger=logger))
    run(make_cfg(*cfg, logger=logger))
    mid = tmp_path / "run" / "checkpoints" / "step000003.ckpt"
    run(make_cfg(*cfg, "trainer.max_steps=9", f"ckpt_path={mid}", logger=logger))
    resumed, straight = history(tmp_path / "run"), history(tmp_path / "straight")
    assert [s for s, _ in resumed] == list(range(9))
    assert resumed == straight


def test_wandb_resumes_the_same_run(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = [*DIGITS, "debug=smoke"]
    run(make_cfg(*cfg, logger="wandb"))
    run(make_cfg(*cfg, "resume=auto", "trainer.max_steps=9", logger="wandb"))
    segments = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    # offline-run-<date>_<time>-<run id>[-<n>]: wandb adds -<n> when a segment dir already exists
    run_ids = {re.fullmatch(r"offline-run-\d{8}_\d{6}-([^-]+)(-\d+)?", p.name).group(1) for p in segments}
    assert len(segments) == 2 and len(run_ids) == 1
