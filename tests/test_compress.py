"""`lrlab compress`: SVD truncation of a trained run, evaluated before and after, reported exactly, never
overwriting a result; bad input is one line and exit code 2."""

import json

import pytest
import torch

from lrlab.train import run

RUN = ["experiment=baseline/digits_mlp_adamw", "model.hidden=[32,32]", "trainer.max_steps=20",
       "trainer.val_check_interval=20"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short run of the digits MLP with a sparse + low-rank parametrization: (last checkpoint, summary)."""
    from lrlab.train import compose

    run_dir = tmp_path_factory.mktemp("compress") / "run"
    summary = run(compose([*RUN, "logger=none", "parametrization=sltrain", "parametrization.rank=4",
                           "parametrization.density=0.05"], run_dir=str(run_dir)))
    assert summary["status"] == "completed"
    return run_dir / "checkpoints" / "last.ckpt", summary


def test_compress_to_a_rank_reports_parameters_bytes_and_metrics(cli, trained):
    ckpt, summary = trained
    code, out, err = cli("compress", f"ckpt={ckpt}", "rank=3")
    assert code == 0, err
    folder = ckpt.parent.parent / "compressed" / "rank-3"
    report = json.loads((folder / "report.json").read_text())
    assert report["before"]["params"] == summary["total_params"]
    assert report["before"]["metrics"]["val/acc"] == pytest.approx(summary["metrics"]["final"]["val/acc"])
    # body 32x64 and 32x32 as rank-3 factors (+ biases), the 10x32 head dense
    assert report["after"]["params"] == 3 * (32 + 64) + 3 * (32 + 32) + 2 * 32 + 10 * 32 + 10
    assert [layer["rank"] for layer in report["layers"]] == [3, 3] and all(l["factored"] for l in report["layers"])
    assert 0 < report["after"]["bytes"] < report["before"]["bytes"]
    weights = torch.load(folder / "model.pt", weights_only=True)
    assert weights["body.1.B"].shape == (32, 3) and weights["body.1.A"].shape == (3, 64)
    assert "val/acc" in report["after"]["metrics"] and "rank-3" in out


def test_full_energy_keeps_the_function(cli, trained, tmp_path):
    ckpt, _ = trained
    code, _, err = cli("compress", f"ckpt={ckpt}", "energy=1.0", f"out={tmp_path / 'full'}")
    assert code == 0, err
    report = json.loads((tmp_path / "full" / "report.json").read_text())
    assert report["before"]["metrics"]["val/acc"] == report["after"]["metrics"]["val/acc"]
    assert report["after"]["metrics"]["val/loss"] == pytest.approx(report["before"]["metrics"]["val/loss"], rel=1e-5)


def test_an_existing_result_is_never_overwritten(cli, trained):
    ckpt, _ = trained
    assert cli("compress", f"ckpt={ckpt}", "rank=2")[0] == 0
    report = ckpt.parent.parent / "compressed" / "rank-2" / "report.json"
    before = report.read_bytes()
    code, _, err = cli("compress", f"ckpt={ckpt}", "rank=2")
    assert code == 2 and err.startswith("error: out=") and err.count("\n") == 1
    assert report.read_bytes() == before


@pytest.mark.parametrize("arguments, key", [
    (["rank=2"], "ckpt"),
    (["ckpt=/nonexistent.ckpt", "rank=2"], "ckpt"),
    (["ckpt=x.ckpt", "rank=2", "energy=0.5"], "rank"),
    (["ckpt=x.ckpt", "rank=0"], "rank"),
    (["ckpt=x.ckpt", "energy=1.5"], "energy"),
    (["ckpt=x.ckpt", "ranks=2"], "compress"),
])
def test_bad_input_is_one_line_and_exit_code_2(cli, tmp_path, arguments, key):
    code, _, err = cli("compress", *arguments)
    assert code == 2 and err.startswith(f"error: {key}=") and err.count("\n") == 1
    assert not any(tmp_path.rglob("report.json"))
