"""Every class of bad input in docs/errors.md: one line `error: KEY=VALUE: ...` on stderr, exit 2,
and the outputs tree byte-identical to before (a finished run in it included)."""

import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tree_digest

SMOKE = ["experiment=baseline/digits_mlp_adamw", "debug=smoke", "logger=none"]
LM_SMOKE = ["debug=smoke", "logger=none", "data.max_tokens=40000"]
UNAVAILABLE = "tpu" if torch.cuda.is_available() else "gpu"




@pytest.fixture(scope="session")
def finished_outputs(tmp_path_factory):
    """An outputs tree holding one finished run, `keep` (made once, copied into each test)."""
    from lrlab.cli import main

    root = tmp_path_factory.mktemp("finished")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main(["train", *SMOKE, "run_name=keep"])
        main(["train", "-m", *SMOKE, "optimizer.lr=1e-3,3e-3", "run_name=grid"])
    finally:
        os.chdir(cwd)
    assert (root / "outputs" / "runs" / "keep" / "summary.json").exists()
    assert (root / "outputs" / "multiruns" / "grid" / "1" / "summary.json").exists()
    return root / "outputs"


@pytest.fixture
def outputs(finished_outputs, tmp_path):
    shutil.copytree(finished_outputs, tmp_path / "outputs")
    return tmp_path / "outputs"


def _keep(tmp_path: Path) -> Path:
    return tmp_path / "outputs" / "runs" / "keep"


# (arguments after `lrlab train`, the key the line must name)
CASES = {
    "unknown option": ([*SMOKE, "model=no_such_model"], "model=no_such_model"),
    "unknown key": ([*SMOKE, "no_such_key=1"], "no_such_key"),
    "unknown trainer argument": ([*SMOKE, "+trainer.foo=1"], "trainer.foo"),
    "wrong type": ([*SMOKE, "optimizer.lr=fast"], "optimizer.lr"),
    "wrong type int": ([*SMOKE, "trainer.max_steps=abc"], "trainer.max_steps"),
    "negative lr": ([*SMOKE, "optimizer.lr=-1"], "optimizer.lr"),
    "infinite lr": ([*SMOKE, "optimizer.lr=inf"], "optimizer.lr"),
    "nan lr": ([*SMOKE, "optimizer.lr=nan"], "optimizer.lr"),
    "invalid betas": ([*SMOKE, "optimizer.betas=[1.5,0.9]"], "optimizer.betas"),
    "negative eps": ([*SMOKE, "optimizer.eps=-1"], "optimizer.eps"),
    "zero batch": ([*SMOKE, "data.batch_size=0"], "data.batch_size"),
    "unknown precision": ([*SMOKE, "trainer.precision=77"], "trainer.precision"),
    "unavailable accelerator": ([*SMOKE, f"trainer.accelerator={UNAVAILABLE}"], "trainer.accelerator"),
    "missing mandatory value": (["data=hf_text", *LM_SMOKE[:2]], "data.dataset='???'"),
    "malformed override": ([*SMOKE, "=3"], "override='=3'"),
    "unresolvable interpolation": ([*SMOKE, "optimizer.lr=${nope}"], "optimizer.lr"),
    "deleted optimizer": ([*SMOKE, "~optimizer"], "optimizer"),
    "deleted scheduler": ([*SMOKE, "~scheduler"], "scheduler"),
    "deleted logger": ([*SMOKE, "~logger"], "logger"),
    "deleted callbacks": ([*SMOKE, "~callbacks"], "callbacks"),
    "negative layers": ([*LM_SMOKE, "model.num_hidden_layers=-1"], "model.num_hidden_layers"),
    "zero width": ([*LM_SMOKE, "model.hidden_size=0"], "model.hidden_size"),
    "heads not dividing": ([*LM_SMOKE, "model.num_attention_heads=3"], "model.hidden_size"),
    "odd head size": ([*LM_SMOKE, "model.hidden_size=132", "model.num_attention_heads=4"], "model.num_attention_heads"),
    "empty mlp layer": ([*SMOKE, "model.hidden=[0]"], "model.hidden"),
    "model/data mismatch": (["model=llama_tiny", "data=digits", "debug=smoke", "logger=none"], "model="),
    "too little data": (["debug=smoke", "logger=none", "data.max_tokens=10"], "data"),
    "unknown resume mode": ([*SMOKE, "resume=sometimes"], "resume"),
    "missing checkpoint": ([*SMOKE, "ckpt_path=/no/such.ckpt"], "ckpt_path"),
    "run name going up": ([*SMOKE, "run_name=../../x"], "run_name"),
    "absolute run name": ([*SMOKE, "run_name=/tmp/x"], "run_name"),
    "run name with a folder": ([*SMOKE, "run_name=a/b"], "run_name"),
    "finished run": ([*SMOKE, "run_name=keep"], "run_name='keep'"),
    "finished grid": (["-m", *SMOKE, "optimizer.lr=1e-3,3e-3", "run_name=grid"], "run_name='grid'"),
    "changed config on resume": ([*SMOKE, "run_name=keep", "resume=auto", "optimizer=sgd"], "resume='auto'"),
    "checkpoint format without fsdp2": ([*SMOKE, "+trainer.checkpoint_format=sharded"], "trainer.checkpoint_format"),
    "unknown checkpoint format": ([*LM_SMOKE, "trainer=fsdp2", "trainer.accelerator=cpu",
                                   "trainer.checkpoint_format=dcp"], "trainer.checkpoint_format='dcp'"),
    "bad value in one grid job": (["-m", *SMOKE, "optimizer.lr=1e-3,inf", "run_name=new_grid"], "optimizer.lr=inf"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(cli, outputs, case):
    args, key = CASES[case]
    before = tree_digest(outputs)
    code, _, err = cli("train", *args)
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], err[-2000:]
    assert tree_digest(outputs) == before


def test_fixed_run_dir_names_the_key_that_fixed_it(cli, outputs, tmp_path):
    before = tree_digest(outputs)
    code, _, err = cli("train", *SMOKE, f"hydra.run.dir={_keep(tmp_path)}")
    assert code == 2 and err.startswith("error: hydra.run.dir=") and "choose another hydra.run.dir" in err
    assert tree_digest(outputs) == before


@pytest.mark.parametrize("where", ["a file", "unwritable", "full"])
def test_output_dir_that_cannot_take_a_run(cli, outputs, tmp_path, monkeypatch, where):
    if where == "a file":
        target = tmp_path / "a_file"
        target.write_text("not a folder")
        monkeypatch.setenv("LRLAB_OUTPUT_DIR", str(target / "outputs"))
    elif where == "unwritable":  # no process may create folders in /proc, root included
        monkeypatch.setenv("LRLAB_OUTPUT_DIR", "/proc/lrlab_outputs")
    else:
        monkeypatch.setenv("LRLAB_OUTPUT_DIR", str(outputs))
        monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 4096, 4096))
    before = tree_digest(tmp_path)
    code, _, err = cli("train", *SMOKE, "run_name=new")
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: paths.output_dir="), err
    assert {"a file": "is a file", "unwritable": "cannot write", "full": "MiB free"}[where] in err
    assert tree_digest(tmp_path) == before


def test_missing_data_names_the_fetch_command(cli, outputs, tmp_path, monkeypatch):
    monkeypatch.setenv("LRLAB_CACHE", str(tmp_path / "empty_cache"))
    before = tree_digest(outputs)
    code, _, err = cli("train", "model=mlp", "data=mnist5k", "debug=smoke", "logger=none")
    assert code == 2 and "lrlab data fetch mnist5k" in err and len(err.strip().splitlines()) == 1
    assert tree_digest(outputs) == before
