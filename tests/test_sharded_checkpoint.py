"""FSDP2's sharded checkpoint directories, read in one process: the pieces join into the whole
tensors; a directory without its metadata or with a missing or truncated shard is incomplete and
`resume=auto` passes over it; a kill between the two renames of a replaced `last.ckpt` leaves the
previous one readable. (Writing them on 2 processes, resuming and exporting: tests/test_scale.py.)"""

import pytest
import torch

from lrlab import resume as resuming
from lrlab import sharded_checkpoint as sharded
from lrlab.errors import ConfigError

WHOLE = torch.arange(30.0).reshape(6, 5)


def piece(rows: slice) -> dict:
    return {"local": WHOLE[rows].clone(), "global_shape": [6, 5], "global_offset": [rows.start, 0],
            "placements": [["shard", 0]]}


def write_checkpoint(folder, step: int, rows=(slice(0, 3), slice(3, 6))) -> None:
    """A 2-rank directory as `FSDP2Strategy` writes it: uneven row pieces of one
    weight, a replicated optimizer tensor, the metadata."""
    folder.mkdir(parents=True)
    files = [sharded.shard_name(rank, 2) for rank in range(2)]
    for rank, name in enumerate(files):
        state = {"w": {"step": 3, "exp_avg": piece(rows[rank]), "projector": torch.ones(2, 2)}}
        torch.save({"rank": rank, "world_size": 2, "state_dict": {"model.w": piece(rows[rank])},
                    "optimizer_states": [{"state": state, "param_groups": [{"lr": 0.1, "params": ["w"]}]}]},
                   folder / name)
    torch.save({"global_step": step, "lrlab": {"config": {}}, "shards": {"world_size": 2, "files": files}},
               folder / sharded.META)


def test_pieces_join_into_the_whole_tensors_and_every_file_loads_weights_only(tmp_path):
    write_checkpoint(tmp_path / "step000004.ckpt", 4, rows=(slice(0, 4), slice(4, 6)))
    for path in (tmp_path / "step000004.ckpt").iterdir():
        torch.load(path, weights_only=True)
    whole = resuming.load_whole(tmp_path / "step000004.ckpt")
    assert torch.equal(whole["state_dict"]["model.w"], WHOLE)
    state = whole["optimizer_states"][0]["state"]["w"]
    assert torch.equal(state["exp_avg"], WHOLE) and torch.equal(state["projector"], torch.ones(2, 2))
    assert state["step"] == 3 and whole["global_step"] == 4


@pytest.mark.parametrize("damage", ["no metadata", "shard missing", "shard truncated"])
def test_resume_auto_passes_over_an_incomplete_checkpoint(tmp_path, damage):
    folder = tmp_path / "checkpoints"
    write_checkpoint(folder / "step000004.ckpt", 4)
    write_checkpoint(folder / "last.ckpt", 8)
    shard = folder / "last.ckpt" / sharded.shard_name(1, 2)
    if damage == "no metadata":
        (folder / "last.ckpt" / sharded.META).unlink()
    elif damage == "shard missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    path, checkpoint, skipped = resuming.newest_readable(tmp_path)
    assert path == folder / "step000004.ckpt" and checkpoint["global_step"] == 4
    assert len(skipped) == 1 and skipped[0].startswith("last.ckpt (")


def test_a_kill_between_the_renames_leaves_the_previous_last_readable(tmp_path):
    """`replace` sets the old `last.ckpt` aside before renaming the new one into place; a kill
    in between leaves no `last.ckpt`, and resume reads the one set aside, not an older step."""
    folder = tmp_path / "checkpoints"
    write_checkpoint(folder / "step000004.ckpt", 4)
    write_checkpoint(folder / "last.ckpt", 8)
    (folder / "last.ckpt").rename(sharded.previous(folder / "last.ckpt"))
    path, checkpoint, _ = resuming.newest_readable(tmp_path)
    assert path == sharded.previous(folder / "last.ckpt") and checkpoint["global_step"] == 8

    write_checkpoint(folder / ".new", 12)
    sharded.replace(folder / ".new", folder / "last.ckpt")
    assert resuming.candidates(tmp_path)[0] == folder / "last.ckpt"
    assert resuming.load(folder / "last.ckpt")["global_step"] == 12
    assert not sharded.previous(folder / "last.ckpt").exists()


def test_resume_on_another_number_of_processes_is_refused(tmp_path):
    write_checkpoint(tmp_path / "last.ckpt", 8)
    meta = resuming.load(tmp_path / "last.ckpt")
    sharded.check_world_size(meta, 2, "resume", "auto")
    with pytest.raises(ConfigError, match="written by 2 processes and this run has 4"):
        sharded.check_world_size(meta, 4, "resume", "auto")


def test_a_format_change_replaces_last_between_file_and_directory(tmp_path):
    """After `trainer.checkpoint_format` changed on resume, the next save replaces a sharded
    `last.ckpt` directory with a file, or a file with a directory, leaving nothing set aside."""
    last = tmp_path / "last.ckpt"
    write_checkpoint(last, 8)
    torch.save({"global_step": 12}, sharded.staging(last))
    sharded.replace(sharded.staging(last), last)
    assert last.is_file() and resuming.load(last)["global_step"] == 12
    write_checkpoint(sharded.staging(last), 16)
    sharded.replace(sharded.staging(last), last)
    assert last.is_dir() and resuming.load(last)["global_step"] == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
