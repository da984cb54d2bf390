"""A resumable, distributed-aware training loader.

Batch order is a pure function of (seed, epoch, batch position): epoch e shuffles with a
generator seeded `seed + e`, every rank takes its slice of each global batch, and after a
checkpoint load the loader skips the batches the run already consumed. So N steps + resume
+ N steps sees exactly the batches of 2N steps straight. Lightning saves and restores the
loader through `state_dict`/`load_state_dict` (its `_Stateful` protocol).
"""

from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler


def private_generator(seed: int) -> torch.Generator:
    """A generator for a DataLoader of its own: each new iterator draws its workers' base seed from
    it instead of from torch's global generator, so starting a validation or a resumed epoch does
    not shift the random numbers the model draws (dropout) and a resume continues them exactly."""
    return torch.Generator().manual_seed(seed)


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of each global batch; `skip` batches are dropped once."""

    def __init__(self, num_samples: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool = True):
        self.num_samples, self.batch_size, self.shuffle, self.seed = num_samples, batch_size, shuffle, seed
        self.drop_last = drop_last
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def __len__(self) -> int:
        global_batch = self.batch_size * _rank_world()[1]
        full, rest = divmod(self.num_samples, global_batch)
        return full + int(rest > 0 and not self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = _rank_world()
        order, global_batch = self._order(), self.batch_size * world
        start, self.skip = self.skip, 0
        for b in range(start, len(self)):
            chunk = order[b * global_batch:(b + 1) * global_batch]
            yield chunk[rank::world].tolist()


class ResumableLoader(DataLoader):
    """DataLoader whose position survives a checkpoint. `position()` gives the trainer's
    (epoch, batches consumed this epoch); each pass shuffles for the epoch it starts in."""

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int,
                 position: Callable[[], tuple[int, int]], drop_last: bool = True, **kwargs):
        sampler = EpochBatchSampler(len(dataset), batch_size, shuffle, seed, drop_last)
        super().__init__(dataset, batch_sampler=sampler, **kwargs)
        self._position = position
        self._resume_at: tuple[int, int] | None = None

    def __iter__(self):
        if self._resume_at is not None:  # first pass after a checkpoint load: trust its position
            epoch, self.batch_sampler.skip = self._resume_at
            self._resume_at = None
        else:
            epoch = self._position()[0]
        self.batch_sampler.set_epoch(epoch)
        return super().__iter__()

    def state_dict(self) -> dict:
        epoch, batches = self._position()
        if batches >= len(self.batch_sampler):  # taken on an epoch's last batch: resume at the next
            epoch, batches = epoch + 1, 0
        return {"epoch": epoch, "batches": batches}

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = (state["epoch"], state["batches"])
