"""Any HF dataset by name + any HF tokenizer, streamed as `seq_len` rows.

Two ways to make rows (`pack`):
- `true`: documents are tokenized, joined with the EOS token and cut into `seq_len` blocks.
- `false` (the GaLore/Fira protocol: `tokenizer(text, max_length=256, truncation=True,
  padding="max_length")` in peft_pretraining/dataloader.py and torchrun_main.py of the official
  GaLore repository, read at commit 8460814): one document per row, truncated to `seq_len`
  tokens with the EOS token last (T5 appends it), padded to `seq_len`; the padding's labels are
  −100, so it is left out of the loss (the official loop sets `labels[labels == pad] = -100`).
  Right padding under causal attention leaves every real position's output unchanged, so no
  attention mask is passed.
Validation reads `val_blocks` rows, or rows until they hold `val_tokens` non-padding tokens (the
row that reaches the count included; GaLore and Fira evaluate on 10M tokens, checked per batch).

The GaLore/Fira protocol is `allenai/c4` ("en", field "text") with the `t5-base` tokenizer at
seq 256 (`data=c4`); the same code reads a local text file (`dataset: text`,
`data_files: path`), which is how it is tested offline.

Readers: rank r of w keeps documents i ≡ r (mod w) of what its reader sees. With `num_workers`
= n > 0 loader workers, tokenizing runs in the workers, beside the training process; the loader
takes batch j from worker j mod n, and worker k reads the files k, k + n, ... of the dataset
(`IterableDataset.shard(n, k, contiguous=False)`), so no document is read twice and none is left
out; n may not exceed the number of files (C4 "en": 1024 train files).

A dataset without the validation split (`val_split`), e.g. local files given as one path or
without that key in `data_files`, is split: every k-th document of the training split
(k = round(1 / val_fraction)) is held out for validation, the rest trains. The count runs over
the documents each reader sees: with loader workers over several files, which documents are held
out depends on `num_workers` (one local file allows no more than one worker).

Resuming: the training loader's checkpoint state holds, besides the number of blocks this rank
consumed, where each reader stands after the last batch the run consumed from it: the datasets
library's iterator state (`IterableDataset.state_dict()`: the shard index and the example index
within that shard, taken after each batch of 64 documents that `iter` hands out), the documents
read since that state, the document counters of the hold-out and rank filters, and the tokens of
a document already split across blocks (the packing buffer). A resumed loader restores that state
(`load_state_dict`), so no consumed document is tokenized again and the resumed blocks are the
uninterrupted run's. The library skips whole shards (files) before the saved one without opening
them, and within the saved shard reads and discards the examples before the position (parsing, no
tokenizing), so the resume time is bounded by one file's parse. A row carries its reader's
position only when it ends a loader batch, and the batches are dealt round robin: batch g of a
pass comes from reader g mod n. A resumed loader deals its first batch to worker 0, so worker k
takes the reader (files and position) that delivers batch B + k. (torchdata's StatefulDataLoader
gathers the library's per-worker states the same way; Lightning drives torch's DataLoader, so the
rows carry them here.) The hold-out and rank filters are this module's own, not the library's
`filter` / `split_dataset_by_node`, so their counters are part of the saved position.
The state is used only when the checkpoint holds it, saved by this rank under the same
rows-deciding config (dataset, files, text field, tokenizer, seq_len, packing, hold-out, batch
size, loader workers, number of ranks); otherwise the loader falls back to re-reading the stream
and skipping the consumed blocks, which yields the same rows more slowly (with workers, a resumed
loader skips, per worker, the batches the reader it takes had delivered). That is the case for a
checkpoint of an older version, a changed config, one taken after an earlier fallback before
every reader had delivered a batch since, one taken at the end of a reader's files (its last,
partial batch carries no position), and, under several
ranks, every rank but the checkpoint's writer (rank 0 writes its own positions; gathering every
rank's is not done). A note on stderr says which of the two a resume uses. The library's state
itself cannot restore a shuffle buffer (its docs: the examples in it are lost); this module does
not shuffle.
"""

import json
import sys
from collections import deque
from collections.abc import Callable, Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

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
                 seq_len: int, max_blocks: int | None, pack: bool = True, max_tokens: int | None = None,
                 every: int = 0, held_out: bool = False):
        """`every` > 0: read only the held-out documents (index ≡ every − 1 mod every) when
        `held_out`, else only the others."""
        self.dataset, self.name, self.split, self.data_files = dataset, name, split, data_files
        self.text_field, self.tokenizer, self.seq_len, self.max_blocks = text_field, tokenizer, seq_len, max_blocks
        self.pack, self.max_tokens = pack, max_tokens
        self.every, self.held_out = every, held_out
        self.skip = 0  # rows this rank consumed before a resume
        self.start: dict | None = None  # {"batches": consumed, "readers": each reader's saved position}
        self.track = False  # rows that end a batch carry their reader's position (the training loader)
        self.batch_size = 1  # rows per batch of the loader (a worker delivers whole batches)
        self.rank, self.world = _rank_world()

    def key(self, workers: int) -> str:
        """What decides a rank's rows and readers: a saved position is valid only under the same."""
        tokenizer = getattr(self.tokenizer, "name_or_path", type(self.tokenizer).__name__)
        return json.dumps([self.dataset, self.name, self.split, self.data_files, self.text_field, str(tokenizer),
                           self.seq_len, self.pack, self.every, self.held_out, self.batch_size, workers,
                           self.world], default=str)

    def role(self) -> tuple[int, int, int]:
        """(the worker whose files and batches this reader takes, the number of workers, the rows it
        skips): batches are dealt round robin from the stream's start, and a resumed loader deals
        its first batch to worker 0."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.start is not None:
            return (worker + self.start["batches"]) % workers, workers, 0
        consumed = -(-self.skip // self.batch_size)
        role = (worker + consumed) % workers
        return role, workers, min(len(range(role, consumed, workers)) * self.batch_size, self.skip)

    def share(self, rows: int, role: int, workers: int) -> int:
        """Of the first `rows` rows (whole batches, dealt round robin), those worker `role` delivers."""
        batches = -(-rows // self.batch_size)
        return min(len(range(role, batches, workers)) * self.batch_size, rows)

    def open(self):
        import datasets

        try:
            return datasets.load_dataset(self.dataset, self.name, split=self.split, streaming=True,
                                         data_files=self.data_files)
        except Exception as err:  # missing dataset / split / offline hub
            raise ConfigError("data.dataset", self.dataset, f"cannot be streamed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:120]})") from None

    def documents(self, role: int = 0, workers: int = 1) -> Iterator[str]:
        return (text for text, _ in self.read(role, workers))

    def read(self, role: int = 0, workers: int = 1, start: dict | None = None) -> Iterator[tuple[str, tuple]]:
        """(document, the reader's cursor after it): (the library's state before the current batch of
        64 rows, rows read since that state, rows read, rows kept by the hold-out filter); `start`
        holds such a cursor to continue from."""
        stream = self.open()
        if workers > 1:
            stream = stream.shard(num_shards=workers, index=role, contiguous=False)
        state, since, i, kept = cursor_of(start)
        if state is not None:
            stream.load_state_dict(state)
        skip = since
        # `iter` reads what it is given (plain iteration splits by worker itself)
        for batch in stream.iter(batch_size=64):
            for row in (dict(zip(batch, values)) for values in zip(*batch.values())):
                if skip:  # read before the saved cursor, after the library's saved state
                    skip -= 1
                    continue
                require(self.text_field in row, "data.text_field", self.text_field,
                        f"not a field of {self.dataset}: one of {', '.join(row)}")
                held = self.every and (i % self.every == self.every - 1) != self.held_out
                i, since = i + 1, since + 1
                if held:
                    continue
                kept += 1
                if (kept - 1) % self.world == self.rank and row[self.text_field]:
                    yield row[self.text_field], (state, since, i, kept)
            state, since = stream.state_dict(), 0

    def __iter__(self) -> Iterator[dict]:
        role, workers, skip = self.role()
        start = None if self.start is None else self.start["readers"][role]
        max_blocks = None if self.max_blocks is None else self.share(self.max_blocks, role, workers)
        produced, tokens = (start["produced"], start["tokens"]) if start else (0, 0)
        self.skip, self.start = 0, None  # a persistent worker's next pass starts from the stream's start
        for ids, length, position in self.rows(role, workers, start):
            if max_blocks is not None and produced >= max_blocks:
                return
            if self.max_tokens is not None and tokens >= self.max_tokens:
                return
            produced, tokens = produced + 1, tokens + length
            if produced <= skip:
                continue
            input_ids = torch.tensor(ids, dtype=torch.long)
            labels = input_ids.clone()
            labels[length:] = -100
            row = {"input_ids": input_ids, "labels": labels, "index": torch.tensor((produced - 1) * workers + role)}
            if self.track and produced % self.batch_size == 0:  # the row that ends a batch: where the next starts
                row["position"] = {**position(), "produced": produced, "tokens": tokens}
            yield row
        # an empty split would end every epoch at once, and the fit loop would start epochs forever
        require(produced > 0 or max_blocks == 0 or workers > 1, "data.dataset", self.dataset,
                f"split {self.split!r} holds no block of data.seq_len={self.seq_len} tokens: give a non-empty "
                "dataset (or a shorter seq_len)")

    def rows(self, role: int, workers: int, start: dict | None) -> Iterator[tuple[list[int], int, Callable[[], dict]]]:
        """(row, its length before padding, a function giving the reader's position after it: cursor
        and the packing buffer's tokens), packed or padded, continuing from `start`."""
        cursor = [cursor_of(start)]
        buffer = list(start["buffer"]) if start else []

        def texts() -> Iterator[str]:
            for text, cursor[0] in self.read(role, workers, start):
                yield text

        def position() -> dict:
            state, since, read, kept = cursor[0]
            return {"dataset": state, "since": since, "read": read, "kept": kept, "buffer": list(buffer)}

        rows = self.blocks(texts(), buffer) if self.pack else self.padded_rows(texts())
        return ((ids, length, position) for ids, length in rows)

    def blocks(self, texts: Iterator[str], buffer: list[int]) -> Iterator[tuple[list[int], int]]:
        """Documents joined with EOS and cut into full `seq_len` blocks (no padding), after the
        tokens already in `buffer`."""
        tokenized = (self.tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts)
        return packed(tokenized, self.seq_len, self.tokenizer.eos_token_id, buffer)

    def padded_rows(self, texts: Iterator[str]) -> Iterator[tuple[list[int], int]]:
        """One document per row: its tokens truncated so that EOS ends it, padded to `seq_len`;
        yields the row and its length before padding."""
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        pad = pad if pad is not None else (eos if eos is not None else 0)
        room = self.seq_len - (eos is not None)
        tokenized = (self.tokenizer(text, add_special_tokens=False, truncation=True, max_length=room)["input_ids"]
                     for text in texts)
        return padded(tokenized, self.seq_len, eos, pad)


def cursor_of(position: dict | None) -> tuple:
    """(the library's iterator state, rows read since it, rows read, rows kept) of a saved position;
    None: the stream's start."""
    if position is None:
        return None, 0, 0, 0
    return position["dataset"], position["since"], position["read"], position["kept"]


def packed(token_lists: Iterator[list[int]], seq_len: int, eos: int | None,
           buffer: list[int] | None = None) -> Iterator[tuple[list[int], int]]:
    """Token lists joined with `eos` and cut into full `seq_len` blocks: (block, seq_len). `buffer`
    holds the tokens not yet in a block (a resumed stream's, given back); after each block it holds
    the rest."""
    buffer = [] if buffer is None else buffer
    token_lists = iter(token_lists)
    while True:
        while len(buffer) >= seq_len:
            block = buffer[:seq_len]
            del buffer[:seq_len]
            yield block, seq_len
        ids = next(token_lists, None)
        if ids is None:
            return
        buffer.extend(ids)
        if eos is not None:
            buffer.append(eos)


def padded(token_lists: Iterator[list[int]], seq_len: int, eos: int | None,
           pad: int) -> Iterator[tuple[list[int], int]]:
    """One (already truncated) token list per row, `eos` appended, padded: (row, its length)."""
    for ids in token_lists:
        ids = ids + [eos] if eos is not None else ids
        yield ids + [pad] * (seq_len - len(ids)), len(ids)


def collate_rows(rows: list[dict]) -> dict:
    """Rows stacked; the batch's "position" is the one its last row carries (None if it has none)."""
    positions = [row.pop("position", None) for row in rows]
    return {**default_collate(rows), "position": positions[-1]}


class StreamLoader(DataLoader):
    """A DataLoader over a PackedStream whose checkpoint state is the blocks consumed and, where
    known, each reader's position after the last batch consumed from it."""

    def __init__(self, stream: PackedStream, batch_size: int, consumed_batches, **kwargs):
        super().__init__(stream, batch_size=batch_size, collate_fn=collate_rows, **kwargs)
        stream.batch_size, stream.track = batch_size, True
        self._consumed_batches = consumed_batches
        self._readers = max(1, self.num_workers)
        self._key = stream.key(self._readers)
        self._delivered: list[deque] = []  # per reader: (batch number in this pass, position after it)

    def __iter__(self):
        start, readers = self.dataset.start, self._readers
        if start is not None:
            known = start["readers"]
        elif self.dataset.skip:  # skipping: a reader's position is known once it delivered a batch
            known = [...] * readers
        else:
            known = [None] * readers  # None: the stream's start
        first = start["batches"] if start is not None else -(-self.dataset.skip // self.batch_size)
        self._delivered = [deque([(-1, position)], maxlen=4) for position in known]
        for number, batch in enumerate(super().__iter__(), start=first):
            position = batch.pop("position")  # None: a partial batch, its reader's last
            self._delivered[int(batch["index"][0]) % readers].append((number, ... if position is None else position))
            yield batch

    def _position_before(self, reader: int, batches: int):
        """The reader's position after its last batch among the first `batches` (Ellipsis: unknown)."""
        earlier = [position for number, position in self._delivered[reader] if number < batches]
        return earlier[-1] if earlier else ...

    def state_dict(self) -> dict:
        batches = self._consumed_batches()
        state = {"blocks": batches * self.batch_size}
        if self._delivered:
            readers = [self._position_before(reader, batches) for reader in range(self._readers)]
            if all(position is not ... for position in readers):
                state["stream"] = {"key": self._key, "rank": self.dataset.rank, "batches": batches, "readers": readers}
        return state

    def _unusable(self, saved: dict | None) -> str | None:
        """Why saved reader positions cannot be restored here (None: they can)."""
        if saved is None:
            return "the checkpoint holds no reader position"
        if saved["key"] != self._key:
            return "the data config changed"
        if saved["rank"] != self.dataset.rank:  # the checkpoint's writer saved its own positions
            return f"the checkpoint holds rank {saved['rank']}'s reader positions"
        return None

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("stream")
        why = self._unusable(saved)
        if why is None:
            self.dataset.start = {"batches": saved["batches"], "readers": saved["readers"]}
            how = f"restoring the saved reader positions after {state['blocks']} blocks (nothing consumed is re-read)"
        else:
            self.dataset.skip = state["blocks"]
            how = f"re-reading the stream and skipping the {state['blocks']} consumed blocks ({why})"
        print(f"note: data resume: {how}", file=sys.stderr)


class HFTextStream(L.LightningDataModule):
    task = "causal_lm"

    def __init__(self, dataset: str, tokenizer: str, vocab_size: int, name: str | None = None,
                 text_field: str = "text", split: str = "train", val_split: str = "validation",
                 data_files: dict | str | None = None, seq_len: int = 256, batch_size: int = 32,
                 val_blocks: int | None = 64, val_tokens: int | None = None, pack: bool = True,
                 max_train_blocks: int | None = None, num_workers: int = 0, seed: int = 0,
                 val_fraction: float = 0.05, prepared: bool = False):
        super().__init__()
        require(isinstance(num_workers, int) and num_workers >= 0, "data.num_workers", num_workers,
                "an integer >= 0 (loader worker processes that read and tokenize the stream)")
        require(seq_len > 0, "data.seq_len", seq_len, "must be a positive integer")
        require(batch_size > 0, "data.batch_size", batch_size, "must be a positive integer")
        require(val_blocks is not None or val_tokens is not None, "data.val_blocks", val_blocks,
                "must be set (a number of rows) when data.val_tokens is null")
        require(val_tokens is None or val_tokens > 0, "data.val_tokens", val_tokens, "must be a positive integer")
        require(0 < val_fraction <= 0.5, "data.val_fraction", val_fraction, "must be in (0, 0.5]")
        self.pack, self.val_tokens = pack, val_tokens
        self.val_every = round(1 / val_fraction) if self.lacks_val_split(data_files, val_split) else 0
        self.dataset, self.name, self.text_field = dataset, name, text_field
        self.split, self.val_split, self.data_files = split, val_split, data_files
        self.tokenizer_name, self.vocab_size, self.seq_len = tokenizer, vocab_size, seq_len
        self.batch_size, self.val_blocks, self.max_train_blocks = batch_size, val_blocks, max_train_blocks
        self.num_workers, self.seed = num_workers, seed
        self.tokenizer = None
        self.num_train_samples = 0  # unknown for a stream
        self.prepared = {}
        require(not (prepared and self.val_every), "data.prepared", prepared,
                "needs a dataset with its own validation split (data_files with a validation entry): "
                "prepared shards do not hold a split-off validation part")
        if prepared:  # the shards must exist before a run writes anything
            from lrlab.data.prepared import find_prepared

            source = {"dataset": dataset, "name": name, "data_files": data_files, "text_field": text_field,
                      "tokenizer": tokenizer, "seq_len": seq_len, "pack": pack}
            found = load_tokenizer(tokenizer)
            self.prepared = {s: find_prepared(source, found, s) for s in (split, val_split)}

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_name)
            require(len(self.tokenizer) <= self.vocab_size, "data.vocab_size", self.vocab_size,
                    f"must be >= the tokenizer's {len(self.tokenizer)} tokens")

    def hf_tokenizer(self):
        self.setup()
        return self.tokenizer

    @staticmethod
    def lacks_val_split(data_files, val_split: str) -> bool:
        """Local files without a `val_split` entry (one path, a list, or a dict without it)."""
        return data_files is not None and not (isinstance(data_files, dict) and val_split in data_files)

    def _stream(self, split: str, max_blocks: int | None, max_tokens: int | None = None) -> PackedStream:
        split_off = self.val_every and split == self.val_split
        return PackedStream(self.dataset, self.name, self.split if split_off else split, self.data_files,
                            self.text_field, self.tokenizer, self.seq_len, max_blocks, self.pack, max_tokens,
                            every=self.val_every, held_out=bool(split_off))

    def _consumed_batches(self) -> int:
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def _position(self) -> tuple[int, int]:
        return self.trainer.current_epoch, self._consumed_batches()

    def train_dataloader(self) -> DataLoader:
        if self.prepared:
            from lrlab.data.loader import ResumableLoader
            from lrlab.data.prepared import PreparedBlocks, batch_as_is

            rows = PreparedBlocks(self.prepared[self.split], self.max_train_blocks)
            return ResumableLoader(rows, self.batch_size, False, self.seed, self._position, collate_fn=batch_as_is,
                                   num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                                   generator=private_generator(self.seed))
        stream = self._stream(self.split, self.max_train_blocks)
        if self.num_workers > 1:
            files = stream.open().num_shards
            require(self.num_workers <= files, "data.num_workers", self.num_workers,
                    f"at most {files}: each loader worker reads whole files of {self.dataset} ({files} here)")
        return StreamLoader(stream, self.batch_size,
                            self._consumed_batches, num_workers=self.num_workers,
                            persistent_workers=self.num_workers > 0, generator=private_generator(self.seed))

    def val_dataloader(self) -> DataLoader:
        if self.prepared:
            from torch.utils.data import BatchSampler, SequentialSampler

            from lrlab.data.prepared import PreparedBlocks, batch_as_is, validation_rows

            rows = validation_rows(PreparedBlocks(self.prepared[self.val_split]), self.val_blocks, self.val_tokens)
            return DataLoader(rows, batch_sampler=BatchSampler(SequentialSampler(rows), self.batch_size, False),
                              collate_fn=batch_as_is)
        return DataLoader(self._stream(self.val_split, self.val_blocks, self.val_tokens), batch_size=self.batch_size,
                          generator=private_generator(self.seed))
