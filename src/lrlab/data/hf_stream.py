"""Any HF dataset by name + any HF tokenizer, streamed and packed into `seq_len` blocks.

The GaLore/Fira protocol is `allenai/c4` ("en", field "text") with the `t5-base` tokenizer at
seq 256 (`data=c4`); the same code reads a local text file (`dataset: text`,
`data_files: path`), which is how it is tested offline. Documents are tokenized, joined with
the EOS token and cut into blocks; rank r of w keeps documents i ≡ r (mod w).

Resuming a stream cannot seek: the loader's checkpoint state is the number of blocks this
rank consumed, and a resumed loader skips that many blocks (re-reading, not re-training them).
"""

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from lrlab.data.loader import _rank_world, private_generator
from lrlab.errors import ConfigError, require


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as err:  # offline hub misses and bad paths surface as many exception types
        raise ConfigError("data.tokenizer", name, f"cannot be loaded ({type(err).__name__}); "
                          "give a local tokenizer directory or run where the hub is reachable") from None


class PackedStream(IterableDataset):
    def __init__(self, dataset: str, name: str | None, split: str, data_files, text_field: str, tokenizer,
                 seq_len: int, max_blocks: int | None):
        self.dataset, self.name, self.split, self.data_files = dataset, name, split, data_files
        self.text_field, self.tokenizer, self.seq_len, self.max_blocks = text_field, tokenizer, seq_len, max_blocks
        self.skip = 0

    def documents(self) -> Iterator[str]:
        import datasets

        try:
            stream = datasets.load_dataset(self.dataset, self.name, split=self.split, streaming=True,
                                           data_files=self.data_files)
        except Exception as err:  # missing dataset / split / offline hub
            raise ConfigError("data.dataset", self.dataset, f"cannot be streamed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:120]})") from None
        rank, world = _rank_world()
        for i, row in enumerate(stream):
            require(self.text_field in row, "data.text_field", self.text_field,
                    f"not a field of {self.dataset}: one of {', '.join(row)}")
            if i % world == rank and row[self.text_field]:
                yield row[self.text_field]

    def __iter__(self) -> Iterator[dict]:
        eos = self.tokenizer.eos_token_id
        buffer: list[int] = []
        produced, skip = 0, self.skip
        self.skip = 0
        for text in self.documents():
            buffer.extend(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if eos is not None:
                buffer.append(eos)
            while len(buffer) >= self.seq_len:
                block, buffer = buffer[: self.seq_len], buffer[self.seq_len:]
                if self.max_blocks is not None and produced >= self.max_blocks:
                    return
                produced += 1
                if produced <= skip:
                    continue
                ids = torch.tensor(block, dtype=torch.long)
                yield {"input_ids": ids, "labels": ids, "index": torch.tensor(produced - 1)}
        # an empty split would end every epoch at once, and the fit loop would start epochs forever
        require(produced > 0 or self.max_blocks == 0, "data.dataset", self.dataset,
                f"split {self.split!r} holds no block of data.seq_len={self.seq_len} tokens: give a non-empty "
                "dataset (or a shorter seq_len)")


class StreamLoader(DataLoader):
    """A DataLoader over a PackedStream whose checkpoint state is the blocks consumed."""

    def __init__(self, stream: PackedStream, batch_size: int, consumed_batches, **kwargs):
        super().__init__(stream, batch_size=batch_size, **kwargs)
        self._consumed_batches = consumed_batches

    def state_dict(self) -> dict:
        return {"blocks": self._consumed_batches() * self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.skip = state["blocks"]


class HFTextStream(L.LightningDataModule):
    task = "causal_lm"

    def __init__(self, dataset: str, tokenizer: str, vocab_size: int, name: str | None = None,
                 text_field: str = "text", split: str = "train", val_split: str = "validation",
                 data_files: dict | str | None = None, seq_len: int = 256, batch_size: int = 32,
                 val_blocks: int = 64, max_train_blocks: int | None = None, num_workers: int = 0, seed: int = 0):
        super().__init__()
        require(seq_len > 0, "data.seq_len", seq_len, "must be a positive integer")
        require(batch_size > 0, "data.batch_size", batch_size, "must be a positive integer")
        self.dataset, self.name, self.text_field = dataset, name, text_field
        self.split, self.val_split, self.data_files = split, val_split, data_files
        self.tokenizer_name, self.vocab_size, self.seq_len = tokenizer, vocab_size, seq_len
        self.batch_size, self.val_blocks, self.max_train_blocks = batch_size, val_blocks, max_train_blocks
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer = None
        self.num_train_samples = 0  # unknown for a stream

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
            require(len(self.tokenizer) <= self.vocab_size, "data.vocab_size", self.vocab_size,
                    f"must be >= the tokenizer's {len(self.tokenizer)} tokens")

    def _stream(self, split: str, max_blocks: int | None) -> PackedStream:
        return PackedStream(self.dataset, self.name, split, self.data_files, self.text_field, self.tokenizer,
                            self.seq_len, max_blocks)

    def _consumed_batches(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def train_dataloader(self) -> DataLoader:
        return StreamLoader(self._stream(self.split, self.max_train_blocks), self.batch_size,
                            self._consumed_batches, num_workers=self.num_workers,
                            generator=private_generator(self.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._stream(self.val_split, self.val_blocks), batch_size=self.batch_size,
                          generator=private_generator(self.seed))
