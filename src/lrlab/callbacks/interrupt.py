"""Graceful SIGINT/SIGTERM: finish the current step, save `last.ckpt`, stop with status
"interrupted". A second SIGINT interrupts at once.

Lightning wraps any SIGTERM handler with its own notifier, which raises at the next loop
boundary, possibly before a checkpoint is written; so the handlers are installed again when
training starts, after Lightning's, and this callback alone answers both signals."""

import signal
from pathlib import Path

import lightning as L


class GracefulInterrupt(L.Callback):
    def __init__(self, checkpoint_dir: str):
        self.checkpoint_dir = Path(checkpoint_dir)
        self.requested = False
        self.saved_path: Path | None = None
        self._previous = {}

    def _request(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._previous = self._install()

    def on_train_start(self, trainer, pl_module) -> None:
        self._install()

    def _install(self) -> dict:
        replaced = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
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

    def on_fit_end(self, trainer, pl_module) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
