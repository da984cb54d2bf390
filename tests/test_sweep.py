"""`lrlab sweep`: optuna ask/tell with its study in `study.db`, resumed after a kill, pruning on an
intermediate validation metric, parallel trials, bad input, and every sweep preset."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from lrlab import conf_dir

QUICK = ["sweep=digits_mlp_lr", "trainer.val_check_interval=25", "logger=none", "sweep.pruner=none"]


def lrlab_sweep(*args, cwd, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "lrlab.cli", "sweep", *args], cwd=cwd, env={**os.environ, "CI": "true"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def trials(study_db: Path) -> list:
    try:
        return optuna.load_study(study_name="lrlab", storage=f"sqlite:///{study_db}").trials
    except Exception:  # not created yet, or being created
        return []


@pytest.mark.slow
def test_a_killed_sweep_continues_with_the_remaining_trials(tmp_path):
    """3 trials; the sweep is killed (kill -9, its whole process group) once trial 0 is complete;
    the same command again continues: trial 0 is kept as it was, and the study ends with 3
    complete trials, each trained in its own run dir."""
    args = [*QUICK, "sweep.n_trials=3", "trainer.max_steps=300", "run_name=resumable"]
    sweep_dir = tmp_path / "outputs" / "sweeps" / "resumable"
    first = lrlab_sweep(*args, cwd=tmp_path)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not any(t.state.name == "COMPLETE" for t in trials(sweep_dir / "study.db")):
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.2)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        first.wait(timeout=60)
    before = trials(sweep_dir / "study.db")
    assert first.returncode == -signal.SIGKILL and [t.state.name for t in before][:1] == ["COMPLETE"]
    assert len([t for t in before if t.state.name == "COMPLETE"]) < 3
    kept = (sweep_dir / "0" / "summary.json").read_text()
    again = lrlab_sweep(*args, cwd=tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    after = trials(sweep_dir / "study.db")
    assert [t.state.name for t in after] == ["COMPLETE"] * 3 and [t.number for t in after] == [0, 1, 2]
    assert (sweep_dir / "0" / "summary.json").read_text() == kept
    for trial in after:
        summary = json.loads((sweep_dir / str(trial.number) / "summary.json").read_text())
        assert summary["status"] == "completed" and trial.value == summary["metrics"]["final"]["val/loss"]
    assert "3 trials: 3 complete; best: trial" in out
    if len(before) > 1:  # the kill left trial 1 running: the rerun trained it again, not a new trial
        assert f"continuing 1 trial(s) a stopped sweep left running: {before[1].number}" in out


def make_spec(sweep_dir: Path, settings, number: int, trial_id: int, values: dict):
    from lrlab.hydra_app import Source
    from lrlab.sweep.study import TrialSpec

    overrides = ["experiment=baseline/digits_mlp_adamw", "trainer.max_steps=40", "trainer.val_check_interval=10",
                 "logger=none", "resume=auto", *[f"{k}={v}" for k, v in values.items()]]
    return TrialSpec(number, trial_id, overrides, str(sweep_dir / str(number)), f"sqlite:///{sweep_dir / 'study.db'}",
                     "val/loss", "min", settings, Source())


def test_a_trial_worse_than_the_median_is_pruned_and_recorded_as_pruned(tmp_path):
    """A study whose earlier trial reached val/loss 0 at every validation step: a new trial
    (lr 1e-5, far worse) is pruned at its first validation by the median rule; its summary says
    pruned with the step, and the study records the trial as pruned with its reported value."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from lrlab.sweep.study import STUDY_NAME, Settings, make_pruner, tell, train_trial

    settings = Settings(params={"optimizer.lr": "interval(1e-5, 1e-1)"}, pruner="median", startup_trials=1)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    space = {"optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True)}
    study = optuna.create_study(storage=storage, study_name=STUDY_NAME, pruner=make_pruner(settings))
    study.add_trial(create_trial(params={"optimizer.lr": 1e-2}, distributions=space, value=0.0,
                                 intermediate_values={10: 0.0, 20: 0.0, 30: 0.0, 40: 0.0}))
    asked = study.ask(space)
    outcome = train_trial(make_spec(tmp_path, settings, asked.number, asked._trial_id, {"optimizer.lr": 1e-5}))
    summary = json.loads((tmp_path / "1" / "summary.json").read_text())
    assert outcome.state == "pruned" and summary["status"] == "pruned" and summary["steps"] == 10
    assert summary["error"].startswith("pruned at step 10: val/loss=")
    tell(study, outcome, {"optimizer.lr": 1e-5}, _sweep(), lambda line: None)
    recorded = study.trials[1]
    assert recorded.state == TrialState.PRUNED and list(recorded.intermediate_values) == [10]
    assert recorded.intermediate_values[10] == pytest.approx(summary["metrics"]["final"]["val/loss"])


def _sweep():
    from types import SimpleNamespace

    return SimpleNamespace(metric="val/loss")


@pytest.mark.slow
def test_parallel_trials_run_at_once_each_with_its_share(tmp_path):
    done = lrlab_sweep(*QUICK, "sweep.n_trials=2", "sweep.n_jobs=2", "trainer.max_steps=50", "run_name=two",
                       cwd=tmp_path)
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-3000:]
    assert "2 trials, 2 at a time" in out and "2 trials: 2 complete" in out
    for trial in (0, 1):
        summary = json.loads((tmp_path / "outputs" / "sweeps" / "two" / str(trial) / "summary.json").read_text())
        assert summary["status"] == "completed"


BAD = {
    "no sweep chosen": (["experiment=baseline/digits_mlp_adamw"], "error: sweep=None: is required"),
    "unknown sweep": (["sweep=no_such"], "error: sweep=no_such: one of "),
    "zero trials": (["sweep=digits_mlp_lr", "sweep.n_trials=0"], "error: sweep.n_trials=0: an integer >= 1"),
    "unknown sampler": (["sweep=digits_mlp_lr", "sweep.sampler=best"], "error: sweep.sampler='best': one of tpe"),
    "not a sweep": (["sweep=digits_mlp_lr", "sweep.params={optimizer.lr: 'interval(1e-4'}"],
                    "error: sweep.params.optimizer.lr='interval(1e-4': not a sweep"),
    "no such key": (["sweep=digits_mlp_lr", "+sweep.params={optimizer.nope: 'interval(1e-4, 1)'}"],
                    "error: sweep.params.optimizer.nope="),
    "bound out of range": (["sweep=digits_mlp_lr", "sweep.params={optimizer.lr: 'interval(-1, 1)'}"],
                           "error: optimizer.lr=-1.0: must be a finite number > 0"),
    "grid over an interval": (["sweep=digits_mlp_lr", "sweep.sampler=grid"],
                              "error: sweep.sampler='grid': needs choice() or range() values; optimizer.lr is an interval"),
    "objective not a validation metric": (["sweep=digits_mlp_lr", "objective.metric=loss"],
                                          "error: objective.metric='loss': must be a validation metric"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_sweep_input_is_one_line_and_writes_nothing(cli, tmp_path, case):
    args, start = BAD[case]
    code, _, err = cli("sweep", *args, "run_name=bad")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith(start), err[-2000:]
    assert not (tmp_path / "outputs").exists()


def test_a_rerun_with_other_settings_is_refused(cli, tmp_path):
    from lrlab.hydra_app import Source
    from lrlab.sweep.study import open_study, plan

    sweep = plan(["sweep=digits_mlp_lr", "run_name=kept"], Source())
    sweep.sweep_dir.mkdir(parents=True)
    open_study(sweep)
    before = (sweep.sweep_dir / "study.db").read_bytes()
    code, _, err = cli("sweep", "sweep=digits_mlp_lr", "run_name=kept", "sweep.seed=1")
    assert code == 2 and "holds a sweep made with other settings" in err and len(err.strip().splitlines()) == 1
    assert (sweep.sweep_dir / "study.db").read_bytes() == before and sorted(os.listdir(sweep.sweep_dir)) == ["study.db"]


def sweep_presets() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("name", sweep_presets())
def test_every_sweep_preset_searches_keys_of_its_config_within_allowed_values(name):
    """Each preset composes; each searched key exists in its config, and the run at each known
    value (an interval's bounds, every choice) passes the checks and builds (as `lrlab validate`)."""
    from lrlab.build import build_parts
    from lrlab.hydra_app import Source
    from lrlab.sweep import space
    from lrlab.sweep.study import plan
    from lrlab.train import check_optimizer, compose
    from lrlab.validate import check_config, check_structure

    sweep = plan([f"sweep={name}", "run_name=preset"], Source())
    assert sweep.space, name
    for key, values in space.bounds(sweep.space).items():
        for value in values:
            cfg = compose(sweep.trial_overrides(0, {key: value}), run_dir="/nonexistent")
            assert OmegaConf.select(cfg, key) == value
            check_structure(cfg)
            check_config(cfg)
            check_optimizer(build_parts(cfg)[1])
