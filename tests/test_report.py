"""`lrlab report`: markdown + CSV over real run dirs (a seed grid, a failed run, a sweep with a
pruned trial), mean ± std over seeds only, every run that did not complete listed as such, and
non-empty PNG figures (loss curves, Pareto, step time, sweep history and importance)."""

import csv
import json
import statistics

import pytest

from lrlab.report.plots import pareto_front

SMOKE = ["experiment=baseline/digits_mlp_adamw", "debug=smoke", "logger=csv"]
PNG = b"\x89PNG\r\n\x1a\n"


def png_ok(path) -> bool:
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 5000


@pytest.fixture
def grid_and_failure(cli, tmp_path):
    code, _, err = cli("train", "-m", *SMOKE, "seed=0,1", "run_name=grid")
    assert code == 0, err
    code, _, _ = cli("train", *SMOKE, "optimizer=sgd", "trainer.gradient_clip_val=null", "optimizer.lr=1e30",
                     "run_name=diverged")
    assert code == 1
    return tmp_path / "outputs"


def test_report_groups_seeds_lists_a_failed_run_and_draws_the_figures(cli, grid_and_failure):
    out = grid_and_failure
    code, text, err = cli("report", str(out / "multiruns" / "grid"), str(out / "runs"), "--out", "rep")
    assert code == 0, err
    folder = out.parent / "rep"
    rows = list(csv.DictReader((folder / "runs.csv").open()))
    assert [(r["status"], r["seeds"], r["method"]) for r in rows] == [("completed", "2", "adamw"), ("failed", "1", "sgd")]
    finals = [json.loads((out / "multiruns" / "grid" / job / "summary.json").read_text())["metrics"]["final"]["val/acc"]
              for job in ("0", "1")]
    assert float(rows[0]["val/acc mean"]) == pytest.approx(statistics.mean(finals), rel=1e-12)
    assert float(rows[0]["val/acc std"]) == pytest.approx(statistics.stdev(finals), rel=1e-12)
    assert "loss is nan" in rows[1]["error"] and rows[1]["val/acc mean"] == ""
    assert "| failed: loss is nan" in text and "±" in text
    assert (folder / "report.md").read_text().startswith("| run | method |")
    for name in ("loss_curves", "pareto", "step_time"):
        assert png_ok(folder / f"{name}.png"), name


def test_runs_with_the_same_seed_are_never_averaged(cli, grid_and_failure, tmp_path):
    """A second grid of the same config and seeds: four runs, two per seed, so four rows."""
    code, _, err = cli("train", "-m", *SMOKE, "seed=0,1", "run_name=again")
    assert code == 0, err
    code, _, err = cli("report", "outputs/multiruns", "--out", "rep")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "rep" / "runs.csv").open()))
    assert [r["seeds"] for r in rows] == ["1"] * 4 and all(r["val/acc std"] == "0.0" for r in rows)


@pytest.mark.slow
def test_a_sweep_report_has_its_best_trial_importance_and_history(cli, tmp_path):
    code, _, err = cli("sweep", "sweep=digits_mlp_lr", "sweep.n_trials=4", "sweep.startup_trials=2",
                       "trainer.max_steps=50", "trainer.val_check_interval=25", "logger=csv", "run_name=sw")
    assert code == 0, err
    sweep_dir = tmp_path / "outputs" / "sweeps" / "sw"
    statuses = [json.loads((sweep_dir / str(n) / "summary.json").read_text())["status"] for n in range(4)]
    code, text, err = cli("report", str(sweep_dir))
    assert code == 0, err
    folder = sweep_dir / "report"
    import optuna

    best = optuna.load_study(study_name="lrlab", storage=f"sqlite:///{sweep_dir / 'study.db'}").best_trial
    assert f"best trial: {best.number} (min objective {best.value:.6g}" in text
    assert "| optimizer.lr |" in text
    rows = list(csv.DictReader((folder / "runs.csv").open()))
    assert sorted(r["status"] for r in rows) == sorted(statuses)
    for name in ("history", "importance", "loss_curves", "pareto", "step_time"):
        assert png_ok(folder / f"{name}.png"), name


def test_a_missing_folder_is_one_line_and_writes_nothing(cli, tmp_path):
    code, _, err = cli("report", "nosuch")
    assert code == 2 and err.strip() == "error: paths=nosuch: no such folder"
    assert list(tmp_path.iterdir()) == []


def test_pareto_front_keeps_points_no_other_beats_on_memory_and_value():
    points = [(1.0, 3.0), (2.0, 2.0), (2.5, 2.5), (3.0, 1.0), (0.5, 4.0), (3.0, 0.5)]
    assert pareto_front(points, lower_is_better=True) == [(0.5, 4.0), (1.0, 3.0), (2.0, 2.0), (3.0, 0.5)]
    assert pareto_front(points, lower_is_better=False) == [(0.5, 4.0)]
