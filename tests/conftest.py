import os

import pytest

os.environ.setdefault("CI", "true")  # no progress bars in test output


@pytest.fixture
def make_cfg(tmp_path):
    """compose(overrides) with the run dir inside tmp_path and loggers off unless asked."""
    from lrlab.train import compose

    def make(*overrides, run="run", logger="none"):
        return compose([f"logger={logger}", *overrides], run_dir=str(tmp_path / run))

    return make


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run `lrlab ARGS` in-process from tmp_path; returns (exit code, stdout, stderr)."""
    from lrlab.cli import main

    monkeypatch.chdir(tmp_path)

    def call(*args):
        code = 0
        try:
            main(list(args))
        except SystemExit as exit_:
            code = exit_.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.fixture(scope="session")
def wordnet():
    """The WordNet glosses in the data cache (fetched once from Debian's wordnet-base if missing)."""
    from lrlab.data.fetch import fetch

    return fetch("wordnet")
