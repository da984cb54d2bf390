"""`lrlab train` behaves as a Hydra app: each of Hydra's flags, a user's config dir, a preset's own
run_name, the pre-check of sweeps an optimising sweeper makes, and the objective it returns."""

import json
import os
import subprocess
import sys

import pytest
import yaml

SMOKE = ["experiment=baseline/digits_mlp_adamw", "debug=smoke", "logger=none"]


@pytest.fixture
def user_dir(tmp_path):
    """A user's own config dir: a primary config `mine` that extends lrlab's `train`, a preset
    `experiment/mine` with its own run_name, and a config `bare` without lrlab's groups."""
    root = tmp_path / "user"
    (root / "experiment").mkdir(parents=True)
    (root / "mine.yaml").write_text("defaults:\n  - train\n  - _self_\nrun_name: from_mine\n")
    (root / "experiment" / "mine.yaml").write_text(
        "# @package _global_\n# my preset: the digits MLP under its own run name\ndefaults:\n  - /setting/digits_mlp\n"
        "run_name: preset_name\ntrainer:\n  max_steps: 6\n  val_check_interval: 3\n")
    (root / "bare.yaml").write_text("defaults:\n  - /model: mlp\n  - _self_\nx: 1\n")
    return root


def test_cfg_prints_the_job_config_and_writes_nothing(cli, tmp_path):
    code, out, _ = cli("train", "--cfg", "job", *SMOKE, "optimizer.lr=0.25")
    assert code == 0 and "lr: 0.25" in out and "_target_: lrlab.models.classifier.mlp" in out
    assert "hydra:" not in out.split("\n", 1)[0] and not (tmp_path / "outputs").exists()


def test_cfg_hydra_and_all_with_resolve(cli, tmp_path):
    code, out, _ = cli("train", "--cfg", "hydra", "hydra/launcher=parallel")
    assert code == 0 and "JoblibLauncher" in out and "sweeper:" in out and "objective:" not in out
    code, out, _ = cli("train", "--cfg", "all", "--resolve", "run_name=shown")
    assert code == 0 and "run_name: shown" in out and "dir: outputs/runs/shown" in out and "${" not in out
    assert not (tmp_path / "outputs").exists()


def test_package_flag_prints_one_package(cli):
    code, out, _ = cli("train", "--cfg", "job", "--package", "optimizer", "optimizer=galore")
    assert code == 0 and "rank: 128" in out and "model:" not in out


@pytest.mark.parametrize("what, expected", [("searchpath", "file://"), ("defaults", "optimizer/adamw"),
                                            ("config", "optimizer:")])
def test_info(cli, what, expected):
    code, out, _ = cli("train", "--info", what)
    assert code == 0 and expected in out


def test_help_lists_lrlab_groups_and_flags(cli):
    code, out, _ = cli("train", "--help")
    assert code == 0 and out.startswith("lrlab train: one run")
    groups = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line and not line.startswith(" "))
    assert "optimizer: adamw," in out and "digits_mlp_lr" in groups["sweep"].split(", ") and "experiment/galore:" in out
    assert "--multirun,-m" in out and 'eval "$(lrlab train -sc install=bash)"' in out
    code, out, _ = cli("train", "--hydra-help")
    assert code == 0 and "hydra/launcher: basic, joblib, parallel" in out


def test_version(cli):
    code, out, _ = cli("train", "--version")
    assert code == 0 and out.startswith("Hydra 1.3")


def test_shell_completion_install_and_query(cli, monkeypatch):
    code, out, _ = cli("train", "-sc", "install=bash")
    assert code == 0 and "hydra_bash_completion" in out and "complete -o nospace" in out
    monkeypatch.setenv("COMP_LINE", "lrlab train optim")
    code, out, _ = cli("-sc", "query=bash")
    assert code == 0 and "optimizer=" in out.split() and "optimizer." in out.split()
    monkeypatch.setenv("COMP_LINE", "lrlab train optimizer=ga")
    code, out, _ = cli("-sc", "query=bash")
    assert code == 0 and "optimizer=galore" in out.split()
    monkeypatch.setenv("COMP_LINE", "lrlab sw")
    code, out, _ = cli("-sc", "query=bash")
    assert code == 0 and out.split() == ["sweep"]


def test_config_name_and_dir_flags(cli, user_dir, tmp_path):
    code, out, _ = cli("train", "-cd", str(user_dir), "-cn", "mine", "--cfg", "job")
    assert code == 0 and "run_name: from_mine" in out
    (tmp_path / "solo").mkdir()
    (tmp_path / "solo" / "alone.yaml").write_text("x: 1\n")
    code, out, _ = cli("train", "-cp", str(tmp_path / "solo"), "-cn", "alone", "--cfg", "job")
    assert code == 0 and out.strip() == "x: 1"
    code, _, err = cli("train", "-cd", str(tmp_path / "no_such_dir"), *SMOKE)
    assert code == 2 and err.startswith("error: --config-dir=") and len(err.strip().splitlines()) == 1


def test_a_presets_run_name_is_honoured_and_stays_out_of_override_dirname(cli, user_dir, tmp_path):
    """The preset sets run_name; `show` prints it, `train` runs there, and the multirun jobs'
    override_dirname holds only what the command line set."""
    code, out, _ = cli("show", "-cd", str(user_dir), "experiment=mine")
    assert code == 0 and "run_name: preset_name" in out
    code, _, err = cli("train", "-cd", str(user_dir), "experiment=mine", "logger=none")
    assert code == 0, err
    assert (tmp_path / "outputs" / "runs" / "preset_name" / "summary.json").is_file()
    code, _, err = cli("train", "-m", "-cd", str(user_dir), "experiment=mine", "logger=none",
                       "optimizer.lr=1e-3,3e-3")
    assert code == 0, err
    dirnames = [yaml.safe_load((tmp_path / "outputs" / "multiruns" / "preset_name" / str(n) / ".hydra" /
                                "hydra.yaml").read_text())["hydra"]["job"]["override_dirname"] for n in (0, 1)]
    assert dirnames == ["experiment=mine,logger=none,optimizer.lr=0.001",
                        "experiment=mine,logger=none,optimizer.lr=0.003"]


def test_user_presets_are_listed_and_validated(cli, user_dir):
    code, out, _ = cli("ls", "experiment", "-cd", str(user_dir))
    assert code == 0 and "mine" in out and "my preset: the digits MLP" in out and "baseline/digits_mlp_adamw" in out
    code, out, _ = cli("ls", "experiment", f"hydra.searchpath=[file://{user_dir}]")
    assert code == 0 and "my preset" in out
    code, out, _ = cli("validate", "-cd", str(user_dir), "--preset", "mine")
    assert code == 0 and "ok     mine" in out
    (user_dir / "experiment" / "broken.yaml").write_text("# @package _global_\noptimizer:\n  lr: -1\n")
    code, out, _ = cli("validate", f"hydra.searchpath=[file://{user_dir}]", "--preset", "broken", "--preset", "mine")
    assert code == 1 and "BROKEN broken: optimizer.lr=-1" in out and "ok     mine" in out


def test_show_prints_the_hydra_node(cli):
    code, out, _ = cli("show", "--hydra", "hydra/launcher=parallel", "run_name=x")
    hydra = yaml.safe_load(out[out.index("\nhydra:") + 1:])["hydra"]
    assert code == 0 and hydra["launcher"]["n_jobs"] == 2 and "JoblibLauncher" in hydra["launcher"]["_target_"]
    assert hydra["sweeper"]["_target_"].endswith("BasicSweeper") and hydra["sweep"]["dir"] == "outputs/multiruns/x"


def test_sweep_jobs_basic_expands_and_others_are_probed(user_dir):
    """The basic sweeper's jobs are known (every one is checked); an optimising sweeper's are
    not: a job per known value (interval bounds, choices, range values) is checked instead, the
    sweeper's configured `params` included."""
    from lrlab.cli import sweep_jobs
    from lrlab.hydra_app import Source

    jobs, every = sweep_jobs([*SMOKE, "optimizer.lr=range(1,4)", "seed=0,1"], Source())
    assert every and len(jobs) == 6 and ["optimizer.lr=3", "seed=1"] == jobs[-1][-2:]
    (user_dir / "experiment" / "search.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /experiment/baseline/digits_mlp_adamw\n"
        "  - override /hydra/sweeper: lrlab_optuna\nhydra:\n  sweeper:\n    params:\n"
        "      optimizer.weight_decay: interval(0, 0.1)\n")
    jobs, every = sweep_jobs(["experiment=search", "optimizer.lr=tag(log, interval(1e-4, 0.1))",
                              "seed=choice(0,1,2)"], Source(config_dir=str(user_dir)))
    assert not every
    values = {item for job in jobs for item in job if item.split("=")[0] in ("optimizer.lr", "seed",
                                                                               "optimizer.weight_decay")}
    assert values == {"optimizer.lr=0.0001", "optimizer.lr=0.1", "seed=0", "seed=1", "seed=2",
                      "optimizer.weight_decay=0.0", "optimizer.weight_decay=0.1"}
    assert len(jobs) == 1 + 1 + 2 + 1


def test_an_optimising_sweep_passes_the_precheck_and_its_bounds_are_checked(cli, tmp_path):
    code, _, err = cli("train", "-m", *SMOKE, "hydra/sweeper=lrlab_optuna", "hydra.sweeper.n_trials=1",
                       "optimizer.lr=tag(log, interval(-1, 0.1))", "run_name=bounds")
    assert code == 2 and err.startswith("error: optimizer.lr=-1.0: must be a finite number > 0 (checked job"), err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_hydra_sweeper_optimises_the_returned_objective(tmp_path):
    """`lrlab train -m` with an optimising Hydra sweeper: each job returns its final val/loss,
    which the sweeper's optuna study records for that job's params."""
    import optuna

    study_db = tmp_path / "hydra_study.db"
    done = subprocess.run([sys.executable, "-m", "lrlab.cli", "train", "-m", *SMOKE, "hydra/sweeper=lrlab_optuna",
                           "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage=sqlite:///{study_db}",
                           "optimizer.lr=tag(log, interval(1e-4, 0.1))", "run_name=opt"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "CI": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    trials = optuna.load_study(study_name="lrlab", storage=f"sqlite:///{study_db}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for trial in trials:
        job = tmp_path / "outputs" / "multiruns" / "opt" / str(trial.number)
        summary = json.loads((job / "summary.json").read_text())
        assert trial.value == summary["metrics"]["final"]["val/loss"]
        assert f"optimizer.lr={trial.params['optimizer.lr']!r}" in (job / ".hydra" / "overrides.yaml").read_text()
    results = yaml.safe_load((tmp_path / "outputs" / "multiruns" / "opt" / "optimization_results.yaml").read_text())
    assert results["best_value"] == min(t.value for t in trials)


def test_the_entry_returns_the_objective_and_the_worst_value_on_failure(tmp_path, monkeypatch):
    """The task function itself, under Hydra's multirun mode: a completed job returns its final
    objective metric; a diverged one returns inf (mode min) and is recorded as failed."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from lrlab import conf_dir, train

    monkeypatch.chdir(tmp_path)
    returned = []
    for num, extra in enumerate([["optimizer.lr=1e-3"], ["optimizer=sgd", "optimizer.lr=1e30",
                                                         "trainer.gradient_clip_val=null"]]):
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("train", [*SMOKE, *extra, f"paths.run_dir={tmp_path / str(num)}", "hydra.mode=MULTIRUN",
                                    f"hydra.job.num={num}"], return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        task_cfg = cfg.copy()
        with __import__("omegaconf").open_dict(task_cfg):
            del task_cfg["hydra"]
        returned.append(train.train(task_cfg))
    summary = json.loads((tmp_path / "0" / "summary.json").read_text())
    assert returned == [summary["metrics"]["final"]["val/loss"], float("inf")]
    assert 1 in train.FAILED and "loss is nan" in train.FAILED[1][0]


def test_objective_value_and_worst():
    from lrlab import objective

    done = {"status": "completed", "metrics": {"final": {"val/acc": 0.9}}}
    assert objective.value(done, "val/acc", "max") == 0.9
    assert objective.value({**done, "status": "failed"}, "val/acc", "max") == float("-inf")
    assert objective.value(done, "val/loss", "min") == float("inf")
    assert "one of val/acc" in objective.missing(done, "val/loss")


@pytest.mark.slow
def test_parallel_launcher_gives_each_job_its_share_of_the_cores(tmp_path):
    from lrlab.parallel import share

    done = subprocess.run([sys.executable, "-m", "lrlab.cli", "train", "-m", *SMOKE, "hydra/launcher=parallel",
                           "seed=0,1", "run_name=par"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CI": "true"})
    assert done.returncode == 0, done.stderr[-3000:]
    for job in (0, 1):
        run_dir = tmp_path / "outputs" / "multiruns" / "par" / str(job)
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["threads"] == share(2)


def test_worker_pool_limits_each_worker_to_its_share():
    import torch

    from lrlab.parallel import share, worker_pool

    with worker_pool(2) as pool:
        threads = [future.result() for future in [pool.submit(_threads) for _ in range(2)]]
    assert threads == [(share(2), str(share(2)))] * 2 and torch.get_num_threads() >= share(2)


def _threads():
    import torch

    return torch.get_num_threads(), os.environ["OMP_NUM_THREADS"]


def test_threads_option_sets_the_runs_threads(make_cfg, monkeypatch):
    import torch

    from lrlab.train import run

    before = torch.get_num_threads()
    try:
        summary = run(make_cfg(*SMOKE, "threads=1"))
        assert summary["status"] == "completed" and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_grid_summary_names_jobs_from_their_records(tmp_path):
    from lrlab.cli import grid_summary, job_outcomes

    for num, (lr, status, error) in enumerate([("0.001", "completed", None), ("1e+30", "failed", "loss is nan; x")]):
        records = tmp_path / str(num) / ".hydra"
        records.mkdir(parents=True)
        (records / "hydra.yaml").write_text(f"hydra:\n  job:\n    num: {num}\n")
        (records / "overrides.yaml").write_text(f"- seed=0\n- optimizer.lr={lr}\n")
        (tmp_path / str(num) / "summary.json").write_text(json.dumps({"status": status, "error": error}))
    outcomes = job_outcomes(tmp_path, {2: ("data='x': refused late", ["seed=0", "optimizer.lr=5"])})
    assert grid_summary(outcomes) == ("1 of 3 jobs completed; failed: job 1 (optimizer.lr=1e+30: loss is nan), "
                                      "job 2 (optimizer.lr=5: data='x': refused late)")
