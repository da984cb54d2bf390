"""The data-module base: datasets of dict samples, resumable training order, no hub access.

A subclass implements `build()` returning (train, val) datasets whose items are dicts of
tensors that include `index` (the sample's position in its split). Subclasses set, in
`build()`: `num_classes` (classification) or `vocab_size` (language modelling).
"""

import lightning as L
from torch.utils.data import DataLoader, Dataset

from lrlab.data.loader import ResumableLoader, private_generator
from lrlab.errors import require


class BaseDataModule(L.LightningDataModule):
    task = "classify"

    def __init__(self, batch_size: int = 32, val_batch_size: int | None = None, num_workers: int = 0,
                 seed: int = 0, shuffle: bool = True):
        super().__init__()
        require(batch_size > 0, "data.batch_size", batch_size, "must be a positive integer")
        require(num_workers >= 0, "data.num_workers", num_workers, "must be >= 0")
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.seed, self.shuffle = num_workers, seed, shuffle
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    def build(self) -> tuple[Dataset, Dataset]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.train_set, self.val_set = self.build()
        name = type(self).__name__
        require(len(self.train_set) > 0, "data", name, "the training split is empty")
        require(len(self.train_set) >= self.batch_size, "data.batch_size", self.batch_size,
                f"at most the training-set size ({len(self.train_set)}) of {name}")
        require(len(self.val_set) > 0, "data", name, "the validation split is empty")

    @property
    def num_train_samples(self) -> int:
        return len(self.train_set)

    def _position(self) -> tuple[int, int]:
        """(epoch, training batches consumed in it), from the trainer when there is one."""
        if self.trainer is None:
            return 0, 0
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def train_dataloader(self) -> DataLoader:
        return ResumableLoader(self.train_set, self.batch_size, self.shuffle, self.seed, self._position,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                               generator=private_generator(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False,
                          num_workers=self.num_workers, generator=private_generator(self.seed))
