"""The README matches the code: its group tables list every option in `conf/`, and the
"Adding a method" example (one Python file + one YAML) runs as written."""

import math
import re
import sys
import types
from pathlib import Path

import pytest

from lrlab import conf_dir

README = Path(__file__).parents[1] / "README.md"
NOT_LISTED = ("hydra", "paths", "experiment")


def table_rows() -> dict[str, set[str]]:
    """group -> the backticked names in its row of the README's config-group table."""
    section = README.read_text().split("### Config groups", 1)[1].split("\n\n", 2)[1]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("group", "---"):
            rows[cells[0]] = set(re.findall(r"`([^`]+)`", cells[1]))
    return rows


def groups() -> dict[str, set[str]]:
    return {d.name: {p.stem for p in d.glob("*.yaml")} for d in conf_dir().iterdir()
            if d.is_dir() and d.name not in NOT_LISTED}


def test_the_group_table_lists_every_group_and_option():
    rows = table_rows()
    assert set(rows) >= set(groups())
    missing = {group: sorted(options - rows[group]) for group, options in groups().items() if options - rows[group]}
    assert not missing


def code_block(after: str) -> str:
    text = README.read_text()
    start = text.index(after)
    return text[text.index("\n", start) + 1:text.index("```", start)]


def test_the_adding_a_method_example_runs_as_written(tmp_path, monkeypatch, make_cfg):
    module = types.ModuleType("lrlab.regularizers.l1")
    exec(code_block("# src/lrlab/regularizers/l1.py"), module.__dict__)
    monkeypatch.setitem(sys.modules, "lrlab.regularizers.l1", module)
    (tmp_path / "extra" / "regularizer").mkdir(parents=True)
    (tmp_path / "extra" / "regularizer" / "l1.yaml").write_text(code_block("# conf/regularizer/l1.yaml"))
    from lrlab.train import run

    cfg = make_cfg("experiment=baseline/digits_mlp_adamw", "debug=smoke", "regularizer=[l1,elr]",
                   f"hydra.searchpath=[file://{tmp_path / 'extra'}]", logger="csv")
    assert list(cfg.regularizer) == ["l1", "elr"]
    summary = run(cfg)
    metrics = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert summary["status"] == "completed" and "train/term_l1" in metrics and "train/term_elr" in metrics


@pytest.mark.parametrize("group", ["regularizer", "adapter", "loss", "parametrization"])
def test_every_method_config_builds_a_protocol_method(group):
    from lrlab.parts import build_loss, build_methods
    from lrlab.protocol import Method
    from lrlab.train import compose

    for name in sorted(groups()[group] - {"none"}):
        cfg = compose([f"{group}={name}"], run_dir="unused")
        built = [*build_methods(cfg), *([] if group != "loss" else [build_loss(cfg)])]
        assert len(built) == 1 and isinstance(built[0], Method), name


def test_the_plain_pytorch_example_trains_with_low_rank_moments():
    """The README's plain-PyTorch loop runs as written: the loss falls, and each matrix keeps
    rank-4 moments (the smaller side projected), each vector dense ones."""
    import torch

    torch.manual_seed(0)
    namespace = {}
    exec(code_block("# plain PyTorch: GaLore on any nn.Module"), namespace)
    model, optimizer = namespace["model"], namespace["optimizer"]
    assert namespace["loss"].item() < 0.8 * math.log(10)  # from about ln 10, chance on 10 random classes
    for p in model.parameters():
        moment = optimizer.state[p]["exp_avg"]
        assert moment.shape == ((64, 4) if p.shape == (64, 32) else (4, 64) if p.shape == (10, 64) else p.shape)
