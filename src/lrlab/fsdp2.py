"""`trainer=fsdp2`: Lightning's ModelParallelStrategy over one data-parallel mesh dimension, saving
lrlab's sharded checkpoints (`lrlab.sharded_checkpoint`) or one consolidated file
(`trainer.checkpoint_format`)."""

from pathlib import Path

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from lrlab.distributed import on_any_rank
from lrlab.rundir import atomic_write
from lrlab.sharded_checkpoint import (META, check_world_size, from_pieces, is_sharded, load_file, read_meta, remove,
                                      replace, shard_name, staging, to_pieces)


def fsdp2_strategy(devices, num_nodes: int, checkpoint_format: str) -> "FSDP2Strategy":
    """Every process shards the model (one data-parallel dimension over all of them). Lightning's
    default splits the mesh into data parallel over nodes × tensor parallel within a node, which
    with no tensor-parallel plan leaves the ranks of a node training apart."""
    processes = devices * num_nodes if isinstance(devices, int) and devices > 0 else "auto"
    return FSDP2Strategy(checkpoint_format == "sharded", data_parallel_size=processes, tensor_parallel_size=1)


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` that saves lrlab's sharded directories (`sharded`) or
    one file gathered on rank 0 and written through the plugin's atomic writer, and resumes from
    either (a run may change `trainer.checkpoint_format` on resume; its next save replaces
    `last.ckpt` in the new format)."""

    def __init__(self, sharded: bool, **kwargs):
        super().__init__(save_distributed_checkpoint=sharded, **kwargs)
        self.shards_checkpoints = sharded

    def _all_done(self, work) -> None:
        """Run `work` (None: nothing to do here) on this rank; if it failed on any rank, raise on
        every rank (a rank that failed raises its own error, the others one naming each failed
        rank and its error), so that no rank waits for another."""
        error = None
        try:
            if work is not None:
                work()
        except OSError as err:
            error = err
        failures = on_any_rank([] if error is None else [f"rank {self.global_rank}: {error}"])
        if failures:
            raise error or OSError("; ".join(failures))

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        path = Path(self.broadcast(str(filepath)))
        if self.shards_checkpoints:
            self._save_sharded(checkpoint, path)
        elif path.is_dir():  # a sharded checkpoint of this run from before a format change
            super().save_checkpoint(checkpoint, staging(path))
            self._all_done((lambda: replace(staging(path), path)) if self.is_global_zero else None)
        else:
            super().save_checkpoint(checkpoint, path)

    def _save_sharded(self, checkpoint: dict, path: Path) -> None:
        partial, world = staging(path), self.world_size

        def make_staging():
            remove(partial)
            partial.mkdir(parents=True)

        self._all_done(make_staging if self.is_global_zero else None)
        shard = {"rank": self.global_rank, "world_size": world, "state_dict": to_pieces(checkpoint.pop("state_dict")),
                 "optimizer_states": to_pieces(checkpoint.pop("optimizer_states", []))}
        name = shard_name(self.global_rank, world)
        self._all_done(lambda: atomic_write(partial / name, lambda out: torch.save(shard, out)))
        meta = {**checkpoint, "shards": {"world_size": world, "files": [shard_name(r, world) for r in range(world)]}}

        def finish():
            atomic_write(partial / META, lambda out: torch.save(meta, out))
            replace(partial, path)

        self._all_done(finish if self.is_global_zero else None)

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not is_sharded(path):
            return super().load_checkpoint(path, weights_only=True)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)
        from torch.distributed.tensor import DTensor

        meta = read_meta(path)
        check_world_size(meta, self.world_size, "ckpt_path", str(path))
        shard = load_file(path / shard_name(self.global_rank, self.world_size))
        mesh = next(p.device_mesh for p in self.model.parameters() if isinstance(p, DTensor))
        options = StateDictOptions(strict=self.lightning_module.strict_loading)
        set_model_state_dict(self.model, from_pieces(shard["state_dict"], mesh, self.root_device), options=options)
        for optimizer, state in zip(self.optimizers, shard["optimizer_states"]):
            set_optimizer_state_dict(self.model, optimizer, from_pieces(state, mesh, self.root_device), options=options)
        meta.pop("shards")
        return meta

    def remove_checkpoint(self, filepath) -> None:
        if self.is_global_zero:
            remove(Path(filepath))
