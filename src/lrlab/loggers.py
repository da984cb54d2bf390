"""Loggers whose history survives a resume.

A resumed run continues its logger's history instead of replacing it. `resume_from(step)` is
called before anything is logged, with the step of the checkpoint the run continues from (0 for
a fresh run): the history of earlier steps is kept, and that of later ones (logged by a segment
killed before its next checkpoint) is dropped, because the resumed run logs those steps again.

- `csv`: Lightning's CSVLogger deletes `metrics.csv` when a run resumes into the same folder;
  here its rows before the resume step are kept and new rows are appended (a header change
  rewrites the file atomically).
- `tensorboard`: a new event file per segment with `purge_step`, so TensorBoard drops the
  orphaned events of the killed segment.
- `wandb`: offline unless WANDB_MODE=online and an API key are set; the run id is kept in
  `<save_dir>/wandb_id`, so every segment logs into the same wandb run. A job of a multirun is
  named `<run_name>/<job number> <its overrides>` and grouped by its sweep (`run_name`); a trial
  of `lrlab sweep` is named and grouped likewise by the sweep.

Every logger receives the run's resolved config as hyperparameters (wandb `config`, TensorBoard
hparams and `hparams.yaml`, CSV `hparams.yaml`).
"""

import csv as csv_module
import io
import os
import uuid
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import TensorBoardLogger as LightningTensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lrlab.rundir import write_text


def _kept_rows(path: Path, before_step: int) -> tuple[list[str], list[dict]]:
    """Header and rows of an existing metrics.csv whose step is below `before_step` (a row cut
    short by a kill has no readable step and is dropped)."""
    if not path.is_file():
        return [], []
    with open(path, newline="") as handle:
        reader = csv_module.DictReader(handle)
        rows = []
        for row in reader:
            try:
                if int(float(row.get("step") or "")) < before_step:
                    rows.append(row)
            except ValueError:
                continue
        return list(reader.fieldnames or []), rows


def _csv_text(fieldnames: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv_module.DictWriter(out, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class _KeepingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before: int):
        self.keep_before = keep_before
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        fieldnames, rows = _kept_rows(Path(self.metrics_file_path), self.keep_before)
        if not fieldnames:
            return
        self.metrics_keys = sorted(fieldnames)
        write_text(self.metrics_file_path, _csv_text(self.metrics_keys, rows))

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        _, rows = _kept_rows(Path(self.metrics_file_path), float("inf"))
        write_text(self.metrics_file_path, _csv_text(fieldnames, rows))


class CSVLogger(LightningCSVLogger):
    resume_step = 0

    def resume_from(self, step: int) -> None:
        self.resume_step = step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.resume_step)
        return self._experiment


class TensorBoardLogger(LightningTensorBoardLogger):
    def resume_from(self, step: int) -> None:
        self._kwargs["purge_step"] = step


def wandb(save_dir: str, project: str, name: str, group: str | None = None, offline: bool | None = None, **kwargs):
    """A WandbLogger that runs offline unless WANDB_MODE=online and WANDB_API_KEY is set, and
    resumes the run id kept in `<save_dir>/wandb_id`; a multirun job is named after its job and
    grouped by its sweep unless `group` is given."""
    from lightning.pytorch.loggers import WandbLogger

    if offline is None:
        offline = not (os.environ.get("WANDB_MODE") == "online" and os.environ.get("WANDB_API_KEY"))
    job = multirun_job()
    if job is not None and group is None:
        name, group = f"{name}/{job[0]} {job[1]}".strip(), name
    kwargs.setdefault("id", run_id(Path(save_dir)))
    return WandbLogger(save_dir=save_dir, project=project, name=name, group=group, offline=offline, **kwargs)


def multirun_job() -> tuple[str, str] | None:
    """(job number, its overrides as Hydra's override_dirname) inside a Hydra multirun job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    job = HydraConfig.get().job
    return str(job.num), str(job.override_dirname)


def run_id(save_dir: Path) -> str:
    path = save_dir / "wandb_id"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    new = uuid.uuid4().hex[:12]
    save_dir.mkdir(parents=True, exist_ok=True)
    write_text(path, new + "\n")
    return new
