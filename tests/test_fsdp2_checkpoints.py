"""FSDP2 checkpoints on 2 CPU processes: sharded (each rank's pieces, rank 0's metadata last) and
consolidated; resume between refreshes, weights-only files, export, a kill's leftovers, a full
disk on one rank, NaN on the shards."""

import json
import subprocess
import sys

import pytest
import torch
from test_scale import env

def lrlab(*args, cwd):
    return subprocess.run([sys.executable, "-m", "lrlab.cli", "train", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=300)


FSDP2_DCT = ["model=llama_tiny", "data.seq_len=32", "data.max_tokens=20000", "logger=none", "trainer=fsdp2",
             "trainer.accelerator=cpu", "trainer.max_steps=8", "trainer.val_check_interval=4",
             "trainer.limit_val_batches=1", "optimizer=dct", "optimizer.rank=8", "optimizer.update_proj_gap=3",
             "callbacks.checkpoint.every_n_train_steps=4", "callbacks.checkpoint.save_top_k=-1"]


@pytest.fixture(scope="module")
def fsdp2_runs(tmp_path_factory):
    """FSDP2 on 2 processes, DCT with T = 3: for each checkpoint format, 8 steps straight and 4 steps
    + the step-4 checkpoint + 4 (the resume falls between refreshes; DCT's integer indices travel).
    The consolidated step-4 file is resumed under the sharded default (a run saved before it)."""
    root = tmp_path_factory.mktemp("fsdp2")
    runs = root / "outputs" / "runs"
    for form in ("sharded", "consolidated"):
        done = lrlab(*FSDP2_DCT, f"trainer.checkpoint_format={form}", f"run_name={form}", cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
        mid = runs / form / "checkpoints" / "step000004.ckpt"
        done = lrlab(*FSDP2_DCT, f"ckpt_path={mid}", f"run_name={form}_resumed", cwd=root)
        assert done.returncode == 0, done.stderr[-3000:]
    return runs


def same(first, second) -> bool:
    if isinstance(first, torch.Tensor):
        return isinstance(second, torch.Tensor) and first.dtype == second.dtype and torch.equal(first, second)
    if isinstance(first, dict):
        return first.keys() == second.keys() and all(same(first[k], second[k]) for k in first)
    if isinstance(first, (list, tuple)):
        return len(first) == len(second) and all(same(a, b) for a, b in zip(first, second))
    return first == second


@pytest.mark.slow
@pytest.mark.parametrize("form", ["sharded", "consolidated"])
def test_fsdp2_resume_between_refreshes_matches_straight(fsdp2_runs, form):
    """Weights and optimizer state (moments, DCT's indices, steps) after the resume equal the
    straight run's bit for bit (the resumed runs write sharded checkpoints)."""
    from lrlab.resume import load_whole

    def last(name):
        return load_whole(fsdp2_runs / name / "checkpoints" / "last.ckpt")

    straight, resumed = last(form), last(f"{form}_resumed")
    assert resumed["global_step"] == straight["global_step"] == 8
    assert same(straight["state_dict"], resumed["state_dict"])
    assert (fsdp2_runs / f"{form}_resumed" / "checkpoints" / "last.ckpt").is_dir()
    assert same(last("sharded")["optimizer_states"], resumed["optimizer_states"])  # both keyed by parameter name
    first = next(iter(straight["optimizer_states"][0]["state"].values()))
    assert first["exp_avg"].shape[0] == 128 or first["exp_avg"].shape[1] == 128  # whole, not one shard's rows


@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_is_each_ranks_pieces_loadable_weights_only(fsdp2_runs):
    """Each rank's file holds its rows of the embedding (no rank holds the whole weight); every
    file of every checkpoint loads with weights_only=True; joined, the weights equal the
    consolidated format's."""
    from lrlab.resume import load_whole

    checkpoints = fsdp2_runs / "sharded" / "checkpoints"
    files = sorted(p for p in checkpoints.rglob("*") if p.is_file())
    assert [p.name for p in files if p.parent.name == "last.ckpt"] == [
        "meta.pt", "shard-00000-of-00002.pt", "shard-00001-of-00002.pt"]
    for path in files:
        torch.load(path, weights_only=True)
    for rank in (0, 1):
        shard = torch.load(checkpoints / "last.ckpt" / f"shard-0000{rank}-of-00002.pt", weights_only=True)
        embedding = shard["state_dict"]["model.model.embed_tokens.weight"]
        assert embedding["local"].shape[0] * 2 == embedding["global_shape"][0]
        assert embedding["global_offset"] == [rank * embedding["local"].shape[0], 0]
    joined = load_whole(checkpoints / "last.ckpt")["state_dict"]
    assert same(joined, load_whole(fsdp2_runs / "consolidated" / "checkpoints" / "last.ckpt")["state_dict"])


@pytest.mark.slow
def test_export_from_a_sharded_checkpoint_equals_export_from_a_consolidated_one(fsdp2_runs, tmp_path):
    from safetensors.torch import load_file

    from lrlab.export import export

    exported = {form: export(str(fsdp2_runs / form), str(tmp_path / form)) for form in ("sharded", "consolidated")}
    assert exported["sharded"]["saved_with"] == exported["consolidated"]["saved_with"] == "save_pretrained"
    weights = [load_file(str(tmp_path / form / "model.safetensors")) for form in ("sharded", "consolidated")]
    assert len(weights[0]) > 0 and same(*weights)


@pytest.mark.slow
def test_fsdp2_resume_auto_passes_over_a_checkpoint_a_kill_left_without_metadata(fsdp2_runs, tmp_path):
    """A copy of the sharded run whose last.ckpt lost its metadata (killed before rank 0 wrote it):
    resume=auto continues from step000008.ckpt and names what it passed over."""
    import shutil

    from lrlab.resume import newest_readable

    copy = tmp_path / "outputs" / "runs" / "sharded"
    shutil.copytree(fsdp2_runs / "sharded", copy)
    (copy / "checkpoints" / "last.ckpt" / "meta.pt").unlink()
    path, checkpoint, skipped = newest_readable(copy)
    assert path.name == "step000008.ckpt" and checkpoint["global_step"] == 8
    assert skipped == ["last.ckpt (ValueError: incomplete: no meta.pt)"]


@pytest.mark.slow
def test_fsdp2_full_disk_on_one_rank_keeps_the_previous_checkpoint(fsdp2_runs, tmp_path):
    """Rank 1's shard write fails with ENOSPC at step 8's checkpoint (tests/fsdp2_faults.py): both
    ranks stop, the summary names rank 1's error and the step-4 checkpoint, nothing half-written is
    taken as a checkpoint, and the restart on a freed disk ends on the straight run's weights."""
    from pathlib import Path

    from lrlab.resume import load_whole

    run_dir, worker = tmp_path / "run", Path(__file__).parent / "fsdp2_faults.py"

    def torchrun(full_from: int):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(worker), str(run_dir), str(full_from)], env=env(), capture_output=True, text=True,
                              timeout=300)

    assert torchrun(full_from=8).returncode != 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "rank 1: [Errno 28] No space left on device" in summary["error"]
    assert "last checkpoint: " in summary["error"] and summary["error"].endswith("(step 4)")
    assert load_whole(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert not (run_dir / "checkpoints" / "step000008.ckpt").exists()
    done = torchrun(full_from=0)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list((run_dir / "checkpoints").glob(".*"))  # the half-written step-8 directory is gone
    resumed = load_whole(run_dir / "checkpoints" / "last.ckpt")
    straight = load_whole(fsdp2_runs / "sharded" / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 8 and same(straight["state_dict"], resumed["state_dict"])


@pytest.mark.slow
def test_fsdp2_nan_on_the_ranks_stops_every_rank_before_a_checkpoint(tmp_path):
    """SGD on llama_tiny under FSDP2, continued at lr 1e6: the weights turn inf/NaN on both
    ranks' shards; no checkpoint with them is written, every rank stops (no hang), and the error
    names the last finite checkpoint."""
    from lrlab.resume import load_whole

    common = ["model=llama_tiny", "data.seq_len=32", "data.max_tokens=20000", "logger=none", "trainer=fsdp2",
              "trainer.accelerator=cpu", "trainer.val_check_interval=2", "trainer.limit_val_batches=1",
              "optimizer=sgd", "optimizer.lr=0.05", "trainer.gradient_clip_val=null",
              "callbacks.checkpoint.every_n_train_steps=2", "callbacks.checkpoint.save_top_k=-1", "run_name=nan"]
    done = lrlab(*common, "trainer.max_steps=4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = lrlab(*common, "trainer.max_steps=10", "optimizer.lr=1e6", "resume=auto", cwd=tmp_path)
    run_dir = tmp_path / "outputs" / "runs" / "nan"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert failed.returncode != 0 and summary["status"] == "failed", failed.stderr[-3000:]
    assert "non-finite values" in summary["error"] and "resume from ckpt_path=" in summary["error"]
    named = summary["error"].split("ckpt_path=")[1].split(" ")[0]
    for path in [named, *(run_dir / "checkpoints").glob("*.ckpt")]:
        state = load_whole(path)
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values() if t.is_floating_point()), path


