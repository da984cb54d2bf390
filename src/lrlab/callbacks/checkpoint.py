"""Checkpoints that survive kill -9, a full disk and a diverged run.

- `AtomicCheckpointIO` (always installed): each checkpoint is written next to its destination,
  fsynced and renamed over it (`rundir.atomic_write`), so the previous file stays whole until
  the new one is complete, on any filesystem. Lightning's own save copies a temp file across
  filesystems, which a kill or a full disk leaves truncated. Loads are always
  `weights_only=True`, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says.
- `CheckpointGuard` (always on): refuses to save parameters or optimizer state holding a NaN or
  inf (`NonFiniteStateError`; the last finite checkpoint stays; under sharded FSDP2 checkpoints
  each rank checks its own pieces and every rank stops if any found one), and stores the run's resolved
  config in each checkpoint so that a resume can tell what it continues.
- `Checkpoint` (`callbacks.checkpoint`): Lightning's ModelCheckpoint, with `last.ckpt` written
  after the validation of its step (a save due at a step that validates waits for the
  validation, so the checkpoint holds its metrics) and at the last training step, not at train
  end: by then Lightning has closed the epoch, and a resume would read the next epoch's order.
"""

from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from lrlab.distributed import on_any_rank
from lrlab.rundir import atomic_write


class NonFiniteStateError(RuntimeError):
    def __init__(self, step: int, names: list[str]):
        self.step, self.names = step, names
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        super().__init__(f"non-finite values in {shown} after step {step}")


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda out: torch.save(checkpoint, out))

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        where = {} if map_location is None else {"map_location": map_location}
        return super().load_checkpoint(path, weights_only=True, **where)


def _tensors(node, name: str):
    if isinstance(node, torch.Tensor):
        yield name, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _tensors(value, f"{name}.{key}" if name else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _tensors(value, f"{name}.{i}")


def non_finite(checkpoint: dict) -> list[str]:
    """Names of the floating-point parameter and optimizer-state tensors holding NaN or inf."""
    found = []
    for part in ("state_dict", "optimizer_states"):
        named = [(n, t) for n, t in _tensors(checkpoint.get(part, {}), part) if t.is_floating_point()]
        if not named:
            continue
        local = [t.to_local() if hasattr(t, "to_local") else t for _, t in named]
        finite = torch.stack([torch.isfinite(t).all() for t in local]).cpu()
        found += [n for (n, _), ok in zip(named, finite.tolist()) if not ok]
    return found


class CheckpointGuard(L.Callback):
    def __init__(self, config: dict):
        self.config = config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if hasattr(pl_module, "check_losses"):
            pl_module.check_losses()  # a diverged loss is named before the state it left
        bad = non_finite(checkpoint)
        if getattr(trainer.strategy, "shards_checkpoints", False):
            bad = on_any_rank(bad)  # each rank checked its own pieces: all stop, or none
        if bad:
            raise NonFiniteStateError(int(checkpoint["global_step"]), bad)
        checkpoint["lrlab"] = {"config": self.config}


class Checkpoint(ModelCheckpoint):
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._validates_now(trainer):
            if self._save_due(trainer):
                self._defer_save_until_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._ends_training(trainer) and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        """Only for a run that ended some other way than its last step (the state it saves
        already counts the closed epoch); a resume that had nothing left to train saves nothing."""
        if trainer.global_step != getattr(self, "_start_step", None) and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_due(self, trainer) -> bool:
        every = self._every_n_train_steps
        return (every >= 1 and trainer.global_step % every == 0) or self._ends_training(trainer)

    @staticmethod
    def _validates_now(trainer) -> bool:
        loop = trainer.fit_loop.epoch_loop
        return not loop._skip_next_val and loop._should_check_val_fx(trainer.fit_loop._data_fetcher)

    @staticmethod
    def _ends_training(trainer) -> bool:
        if trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step:
            return True
        last_epoch = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs > 0
        return last_epoch and trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
