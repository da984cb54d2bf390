"""An FSDP2 run whose disk fills on one rank, in the two processes torchrun starts:

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/fsdp2_faults.py RUN_DIR FULL_FROM

llama_tiny with DCT for 8 steps, sharded checkpoints every 4. From the checkpoint of step
FULL_FROM on, rank 1's writes of its shard fail with ENOSPC, as on a disk that filled between two
saves (rank 0's writes still succeed); FULL_FROM 0 never fails. The same command with 0 is then
the run's restart on a freed disk (`resume=auto`).
"""

import errno
import os
import sys
from pathlib import Path

import torch

OVERRIDES = ["model=llama_tiny", "data.seq_len=32", "data.max_tokens=20000", "logger=none", "trainer=fsdp2",
             "trainer.accelerator=cpu", "trainer.max_steps=8", "trainer.val_check_interval=4",
             "trainer.limit_val_batches=1", "optimizer=dct", "optimizer.rank=8", "optimizer.update_proj_gap=3",
             "callbacks.checkpoint.every_n_train_steps=4", "callbacks.checkpoint.save_top_k=-1", "resume=auto",
             "run_name=disk"]


def fill_disk_on_rank_1(full_from: int) -> None:
    """Make rank 1's shard writes fail from the checkpoint of step `full_from` on."""
    from lrlab.fsdp2 import FSDP2Strategy

    saving = {"step": 0}
    save_sharded, save = FSDP2Strategy._save_sharded, torch.save

    def recording_step(self, checkpoint, path):
        saving["step"] = checkpoint["global_step"]
        save_sharded(self, checkpoint, path)

    def save_until_full(obj, out, *args, **kwargs):
        if "shard-" in str(getattr(out, "name", "")) and saving["step"] >= full_from:
            raise OSError(errno.ENOSPC, "No space left on device", str(out.name))
        save(obj, out, *args, **kwargs)

    FSDP2Strategy._save_sharded = recording_step
    torch.save = save_until_full


def main(run_dir: str, full_from: int) -> None:
    from lrlab.console import quiet_libraries
    from lrlab.train import compose, run

    quiet_libraries()
    torch.set_num_threads(1)
    if full_from and os.environ["RANK"] == "1":
        fill_disk_on_rank_1(full_from)
    run(compose(OVERRIDES, run_dir=run_dir))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
