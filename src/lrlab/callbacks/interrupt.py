"""Graceful SIGINT/SIGTERM: finish the current step, save `last.ckpt`, stop with status
"interrupted". A second SIGINT interrupts at once.

Under SLURM (`SLURM_JOB_ID` set) SIGUSR1, which SLURM sends `signal_delay_s` before the time limit
(`hydra/launcher=slurm`), does the same and then requeues the job (`scontrol requeue`, rank 0):
the job starts again with the same command, and `resume=auto` continues from that checkpoint.
This replaces Lightning's own SLURM requeue (which saves an `hpc_ckpt` outside `checkpoints/`,
where `resume=auto` does not look).

Lightning wraps any SIGTERM handler with its own notifier, which raises at the next loop
boundary, possibly before a checkpoint is written; so the handlers are installed again when
training starts, after Lightning's, and this callback alone answers both signals."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L


class GracefulInterrupt(L.Callback):
    def __init__(self, checkpoint_dir: str):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.requested = False
        self.requeue = False
        self.saved_path: Path | None = None
        self._previous = {}

    def _request(self, signum, frame) -> None:
        self.requested = True
        self.requeue = self.requeue or signum == signal.SIGUSR1
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._previous = self._install()

    def on_train_start(self, trainer, pl_module) -> None:
        self._install()

    def _install(self) -> dict:
        replaced = {}
        on_slurm = bool(os.environ.get("SLURM_JOB_ID"))
        for sig in (signal.SIGINT, signal.SIGTERM, *([signal.SIGUSR1] if on_slurm else [])):
            try:
                replaced[sig] = signal.signal(sig, self._request)
            except ValueError:  # not the main thread (e.g. a notebook worker): keep defaults
                pass
        return replaced

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested and not trainer.should_stop:
            self.saved_path = self.checkpoint_dir / "last.ckpt"
            trainer.save_checkpoint(self.saved_path)
            trainer.should_stop = True
            if self.requeue and trainer.is_global_zero:
                requeue(os.environ["SLURM_JOB_ID"])


def requeue(job_id: str) -> None:
    """Put the job back in SLURM's queue; it starts again with its command (resume=auto)."""
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        reason = done.stderr.strip() if done.returncode != 0 else None
    except OSError as err:
        reason = str(err)
    if reason is not None:
        print(f"warning: scontrol requeue {job_id} failed ({reason}): continue it with resume=auto", file=sys.stderr)

    def on_fit_end(self, trainer, pl_module) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
