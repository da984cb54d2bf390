"""Sharded FSDP2 checkpoints (`trainer=fsdp2`, `trainer.checkpoint_format=sharded`, the default).

A checkpoint is a directory `checkpoints/<name>.ckpt/` holding
- `shard-RRRRR-of-WWWWW.pt`, one per rank, written by that rank: its local pieces of the
  weights (`state_dict`) and of the optimizer state (`optimizer_states`, keyed by parameter
  name), each DTensor as `{"local": tensor, "global_shape", "global_offset", "placements"}`,
  every other value (replicated projectors, step counters, param groups) as it is;
- `meta.pt`, written last by rank 0 once every shard is on disk: everything else Lightning
  saves (step, loops, callbacks, lr schedulers), lrlab's config, and `shards` (world size,
  file names).
Every file is plain tensors, numbers, strings, lists and dicts: `torch.load(weights_only=True)`
reads each one. No rank gathers another rank's pieces: saving needs no memory beyond the
rank's own shard.

Written atomically as a whole: the files go to `.<name>.ckpt.saving/` (each through
`rundir.atomic_write`), then rank 0 renames that directory into place (`replace`). A checkpoint
that already holds the name (`last.ckpt`) is first renamed to `.<name>.ckpt.previous`, which a
resume reads when a kill fell between the two renames (`previous`). A checkpoint without its
`meta.pt` or with a missing or unreadable shard is incomplete: `read` refuses it, so
`resume=auto` passes over it.

Torch's own distributed checkpoint format (`torch.distributed.checkpoint`, Lightning's
`save_distributed_checkpoint=True`) is not used: its `.metadata` file is read with plain
`pickle.load` (`FileSystemReader.read_metadata`, torch 2.13), which runs whatever code a
planted file holds; and Lightning writes its data files into the checkpoint's own directory,
so a save over `last.ckpt` overwrites the previous one's files before the new one is complete
(only `.metadata` goes through a temp file and a rename).

A resume needs the world size the checkpoint was written with (`check_world_size`; one line,
exit 2 otherwise); `consolidated` joins the pieces in one process (`lrlab export`, the
finite checks) for any world size.
"""

import os
import shutil
from pathlib import Path

import torch

from lrlab.errors import ConfigError
from lrlab.rundir import atomic_write, fsync_dir

META = "meta.pt"
FORMATS = ("sharded", "consolidated")


def shard_name(rank: int, world_size: int) -> str:
    return f"shard-{rank:05d}-of-{world_size:05d}.pt"


def staging(path: Path) -> Path:
    return path.with_name(f".{path.name}.saving")


def previous(path: Path) -> Path:
    return path.with_name(f".{path.name}.previous")


# --- pieces: a DTensor as its local tensor and where it lies in the whole -------------------
def _placement(placement) -> list:
    if placement.is_shard():
        return ["shard", int(placement.dim)]
    if placement.is_replicate():
        return ["replicate"]
    raise ValueError(f"cannot save a DTensor placed as {placement} (partial sums)")


def _placements(saved: list) -> list:
    from torch.distributed.tensor import Replicate, Shard

    return [Shard(p[1]) if p[0] == "shard" else Replicate() for p in saved]


def to_pieces(node):
    """`node` with each DTensor replaced by its local piece on the CPU and its place."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if isinstance(node, DTensor):
        _, offset = compute_local_shape_and_global_offset(node.shape, node.device_mesh, node.placements)
        return {"local": node.to_local().detach().to("cpu", copy=True), "global_shape": list(node.shape),
                "global_offset": list(offset), "placements": [_placement(p) for p in node.placements]}
    if isinstance(node, torch.Tensor):
        return node.detach().to("cpu", copy=True)
    if isinstance(node, dict):
        return {key: to_pieces(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(to_pieces(value) for value in node)
    return node


def is_piece(node) -> bool:
    return isinstance(node, dict) and "global_offset" in node and "local" in node


def from_pieces(node, mesh, device):
    """The inverse of `to_pieces` on the rank that wrote the pieces (same mesh, same world size)."""
    from torch.distributed.tensor import DTensor

    if is_piece(node):
        local = node["local"].to(device)
        whole = torch.empty(node["global_shape"], dtype=local.dtype, device="meta")
        return DTensor.from_local(local, mesh, _placements(node["placements"]), run_check=False,
                                  shape=whole.shape, stride=whole.stride())
    if isinstance(node, torch.Tensor):
        return node.to(device)
    if isinstance(node, dict):
        return {key: from_pieces(value, mesh, device) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(from_pieces(value, mesh, device) for value in node)
    return node


def join(nodes: list):
    """One value from every rank's version of it: pieces placed into the whole tensor, any other
    value (replicated on every rank) taken from rank 0."""
    first = nodes[0]
    if is_piece(first):
        whole = torch.empty(first["global_shape"], dtype=first["local"].dtype)
        for piece in nodes:
            where = tuple(slice(o, o + n) for o, n in zip(piece["global_offset"], piece["local"].shape))
            whole[where] = piece["local"]
        return whole
    if isinstance(first, dict):
        return {key: join([node[key] for node in nodes]) for key in first}
    if isinstance(first, (list, tuple)):
        return type(first)(join([node[i] for node in nodes]) for i in range(len(first)))
    return first


# --- reading ---------------------------------------------------------------------------------
def is_sharded(path) -> bool:
    return Path(path).is_dir()


def load_file(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def read_meta(path) -> dict:
    """The metadata of a checkpoint directory (its shards unread)."""
    return load_file(Path(path) / META)


def read(path) -> tuple[dict, list[dict]]:
    """(metadata, every rank's shard) of a complete checkpoint directory; ValueError or the
    load's own error for an incomplete one (no metadata, a shard missing or unreadable)."""
    path = Path(path)
    if not (path / META).is_file():
        raise ValueError(f"incomplete: no {META}")
    meta = read_meta(path)
    layout = meta.get("shards") if isinstance(meta, dict) else None
    if not layout:
        raise ValueError(f"{META} names no shards")
    shards = []
    for rank, name in enumerate(layout["files"]):
        if not (path / name).is_file():
            raise ValueError(f"incomplete: no {name}")
        shard = load_file(path / name)
        if not isinstance(shard, dict) or shard.get("rank") != rank:
            raise ValueError(f"{name} is not rank {rank}'s shard")
        shards.append(shard)
    return meta, shards


def consolidated(path) -> dict:
    """The checkpoint as the consolidated format holds it (whole tensors; the optimizer state
    keyed by parameter name), joined in this process."""
    meta, shards = read(path)
    parts = {part: join([shard[part] for shard in shards]) for part in ("state_dict", "optimizer_states")}
    return {**meta, **parts}


def check_world_size(meta: dict, processes, key: str, value) -> None:
    saved = int(meta["shards"]["world_size"])
    if isinstance(processes, int) and processes != saved:
        raise ConfigError(key, value, f"the sharded checkpoint was written by {saved} processes and this run has "
                          f"{processes}: resume it with trainer.devices × trainer.num_nodes = {saved} "
                          "(`lrlab export` reads it on any number)")


# --- writing ----------------------------------------------------------------------------------
def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def replace(source: Path, target: Path) -> None:
    """Rename the complete `source` (a directory, or a file) to `target`; an existing `target`
    stays readable as `previous(target)` until the new one is in place."""
    aside = previous(target)
    if target.exists():
        remove(aside)
        os.replace(target, aside)
    os.replace(source, target)
    fsync_dir(target.parent)
    remove(aside)
