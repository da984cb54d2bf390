"""The run dir and the rules that keep what is in it.

- One writer at a time: `RunLock` holds an exclusive `flock` on `<run dir>/.lock` for the whole
  run. The kernel drops it when the process dies (kill -9 included), so a crashed run never
  blocks its own resume, and a second `lrlab train` into the same dir stops with one line.
- Files are replaced whole: `atomic_write` writes `.<name>.<pid>.partial` in the destination
  folder (so the rename never crosses a filesystem), fsyncs it, renames it over the target and
  fsyncs the folder. A kill or a full disk leaves either the old file or the new one.
- Names stay inside the outputs dir (`check_run_name`), and the outputs dir is checked for being
  a folder, writable and roomy enough before anything is created (`check_writable`).
- Records: `config.yaml` (the resolved config now running), `.hydra/` (the first launch's composed
  config and overrides, written once the run is accepted, not by Hydra before validation) and
  `resumes.jsonl` (one line per resume: the step, the checkpoint and the keys that changed).
"""

import errno
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from omegaconf import DictConfig, OmegaConf

from lrlab.errors import ConfigError, require

LOCK_NAME = ".lock"
PARTIAL = ".partial"


# --- atomic files -------------------------------------------------------------------------
def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)` so that readers only ever see a complete file."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}{PARTIAL}"
    try:
        with open(tmp, "wb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text(path, text: str) -> None:
    atomic_write(path, lambda out: out.write(text.encode()))


def remove_partials(run_dir: Path) -> None:
    """Temp files of writes that a kill interrupted, and checkpoints it left half-written under
    FSDP2 (`.<name>.ckpt.saving`); only called while holding the run's lock."""
    for stale in Path(run_dir).rglob(f".*{PARTIAL}"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
    for stale in Path(run_dir).glob("checkpoints/.*.saving"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


# --- one writer ---------------------------------------------------------------------------
class RunLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._file = None

    def holder(self) -> int | None:
        """The pid of a live process holding the lock (-1 if unknown); None when it is free.
        Creates nothing: a dir without a lock file is free."""
        if not self.path.is_file():
            return None
        with open(self.path) as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                text = probe.read().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(probe, fcntl.LOCK_UN)
        return None

    def acquire(self, run_name) -> None:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise in_use(run_name, self.path.parent, self.holder()) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def in_use(run_name, run_dir: Path, pid: int | None) -> ConfigError:
    who = f"lrlab process {pid}" if pid and pid > 0 else "another lrlab process"
    return ConfigError("run_name", str(run_name), f"{run_dir} is in use by {who}: wait for it to finish, "
                       "or choose another run_name")


# --- names and places ---------------------------------------------------------------------
def check_run_name(name) -> None:
    text = str(name)
    plain = bool(text) and text not in (".", "..") and not any(c in text for c in ("/", "\\", "\0"))
    require(plain, "run_name", name, "a plain folder name (no '/', '\\', '..' or absolute path): "
            "runs stay inside the outputs dir")


def first_missing(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what creating it would add)."""
    path, missing = Path(os.path.abspath(path)), None
    while not path.exists() and path != path.parent:
        missing, path = path, path.parent
    return missing


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(run_dir: Path, key: str, value, need_bytes: int = 0) -> None:
    """Refuse a run dir that cannot be created or written, or whose filesystem is nearly full.
    The probe (a folder or temp file, removed again) leaves the tree as it was."""
    base = _existing_ancestor(run_dir)
    require(base.is_dir(), key, value, f"{base} is a file, not a folder: choose another output dir")
    try:
        if Path(run_dir).is_dir():
            fd, name = tempfile.mkstemp(dir=run_dir, prefix=".probe")
            os.close(fd)
            os.unlink(name)
        else:
            created = first_missing(run_dir)
            os.makedirs(run_dir)
            shutil.rmtree(created, ignore_errors=True)
    except OSError as err:
        raise ConfigError(key, value, f"cannot write {run_dir} ({err.strerror or err}): choose a writable "
                          "output dir (LRLAB_OUTPUT_DIR or paths.output_dir)") from None
    free = shutil.disk_usage(base).free
    require(free >= need_bytes, key, value, f"only {free / 2**20:.0f} MiB free on its filesystem; a checkpoint "
            f"needs about {need_bytes / 2**20:.0f} MiB: free space or choose another output dir")


def no_space(err: OSError) -> bool:
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


# --- results and records ------------------------------------------------------------------
def has_results(run_dir: Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / "summary.json").exists() or any((run_dir / "checkpoints").glob("*.ckpt"))


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_records(run_dir: Path, cfg: DictConfig, resume: dict | None, hydra_cfg: DictConfig | None) -> None:
    """`config.yaml` always; `.hydra/` on a first launch from the CLI (`hydra_cfg` is Hydra's
    own config of this job); a `resumes.jsonl` line on a resume."""
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if resume is None:
        if hydra_cfg is not None:
            _write_hydra_records(run_dir, cfg, hydra_cfg)
        return
    line = json.dumps({**resume, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    with open(run_dir / "resumes.jsonl", "a") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())


def _write_hydra_records(run_dir: Path, cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    folder = run_dir / ".hydra"
    folder.mkdir(exist_ok=True)
    write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))
