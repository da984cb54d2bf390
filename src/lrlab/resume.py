"""Resuming: which checkpoint a run continues from, and whether the new config may continue it.

A resume continues what was trained. It may change how long (`trainer.max_steps`, the lr
schedule), how the run is watched (logging, validation interval and batches, callbacks,
loggers), the learning rate and clipping (to recover from a divergence), the layer-wise
step (the same update) and FSDP2's checkpoint format (the same state); these are applied and
recorded. Any other difference (model, data, optimizer and its settings, adapter,
regularizers, seed, batch size, precision, devices) would continue the old run under a new
label, so it is refused before anything is written, naming the keys.

A checkpoint is a file, or (FSDP2's sharded format, `lrlab.sharded_checkpoint`) a directory
that counts only when its metadata and every shard read. Every load here is
`torch.load(weights_only=True)` (memory-mapped: only what is read is paged in), so a planted
checkpoint cannot run code even with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD set.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from lrlab import sharded_checkpoint as sharded
from lrlab.errors import ConfigError

MAY_CHANGE = ("trainer.max_steps", "trainer.max_epochs", "trainer.val_check_interval",
              "trainer.check_val_every_n_epoch", "trainer.limit_val_batches", "trainer.log_every_n_steps",
              "trainer.enable_progress_bar", "trainer.num_sanity_val_steps", "trainer.gradient_clip_val",
              "trainer.checkpoint_format",
              "optimizer.lr", "optimizer.layerwise", "scheduler", "logger", "callbacks", "paths", "run_name", "resume",
              "ckpt_path", "deterministic", "threads", "objective", "sweep")
SHOWN_KEYS = 6


@dataclass
class Start:
    """Where a run starts: a checkpoint and its step (none: from scratch), the allowed changes
    against the checkpoint's config ({key: [old, new]}), and unreadable checkpoints passed over."""
    ckpt: str | None = None
    step: int = 0
    changed: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)

    def record(self) -> dict:
        return {"step": self.step, "checkpoint": self.ckpt, "changed": self.changed, "skipped": self.skipped}


def load(path) -> dict:
    """A checkpoint file, or a sharded directory's metadata once every shard has been read."""
    if sharded.is_sharded(path):
        return sharded.read(path)[0]
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def load_whole(path) -> dict:
    """The checkpoint with its weights and optimizer state (a sharded one joined in this process)."""
    return sharded.consolidated(path) if sharded.is_sharded(path) else load(path)


def try_load(path: Path) -> tuple[dict | None, str | None]:
    """(checkpoint, None), or (None, why it cannot be used)."""
    try:
        checkpoint = load(path)
    except Exception as err:  # truncated zip, pickle refused by weights_only, a shard missing, not a checkpoint
        first = str(err).strip().split(". ")[0].splitlines()[0] if str(err).strip() else ""
        return None, f"{type(err).__name__}: {first[:120]}"
    if not isinstance(checkpoint, dict) or "global_step" not in checkpoint:
        return None, "not a training checkpoint (no global_step)"
    return checkpoint, None


def candidates(run_dir: Path) -> list[Path]:
    """`last.ckpt` (or the sharded `last.ckpt` that a kill left set aside while its successor was
    renamed into place), then the periodic `stepNNNNNN.ckpt` files or directories from the newest."""
    folder = Path(run_dir) / "checkpoints"

    def step(path: Path) -> int:
        digits = re.findall(r"\d+", path.stem)
        return int(digits[-1]) if digits else -1

    periodic = sorted((p for p in folder.glob("*.ckpt") if p.name != "last.ckpt"), key=step, reverse=True)
    last = folder / "last.ckpt"
    return [path for path in (last, sharded.previous(last)) if path.exists()] + periodic


def newest_readable(run_dir: Path) -> tuple[Path | None, dict | None, list[str]]:
    skipped = []
    for path in candidates(run_dir):
        checkpoint, reason = try_load(path)
        if checkpoint is not None:
            return path, checkpoint, skipped
        skipped.append(f"{path.name} ({reason})")
    return None, None, skipped


def flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        flat = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def may_change(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in MAY_CHANGE)


def differences(old: dict, new: dict) -> dict:
    flat_old, flat_new = flatten(old), flatten(new)
    missing = object()
    diff = {}
    for key in sorted(set(flat_old) | set(flat_new)):
        before, after = flat_old.get(key, missing), flat_new.get(key, missing)
        if before != after:
            diff[key] = [None if before is missing else before, None if after is missing else after]
    return diff


def plain(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)


def checked_changes(checkpoint: dict, cfg: DictConfig, key: str, value, fallback: dict | None = None) -> dict:
    """The allowed changes from the checkpoint's config to `cfg`; ConfigError naming the others.
    `fallback` is the run dir's `config.yaml` for checkpoints that carry no config."""
    reference = (checkpoint.get("lrlab") or {}).get("config") or fallback
    if reference is None:
        return {}
    diff = differences(reference, plain(cfg))
    refused = {k: v for k, v in diff.items() if not may_change(k)}
    if refused:
        shown = [f"{k} ({v[0]!r} -> {v[1]!r})" for k, v in list(refused.items())[:SHOWN_KEYS]]
        more = f" and {len(refused) - SHOWN_KEYS} more" if len(refused) > SHOWN_KEYS else ""
        raise ConfigError(key, value, f"the checkpoint (step {checkpoint['global_step']}) was trained with "
                          f"another config: {', '.join(shown)}{more} differ; undo these changes, "
                          "or start a new run_name")
    return {k: v for k, v in diff.items() if not k.startswith(("paths.", "resume", "ckpt_path"))}
