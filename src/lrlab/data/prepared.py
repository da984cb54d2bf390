"""Prepared token shards: tokenize a streamed corpus once, then train from memory-mapped blocks.

`lrlab data prepare DATA [overrides]` reads the split the stream would read (`hf_text`/`c4`:
any HF dataset or local files, any HF tokenizer), tokenizes its documents in parallel over the
cores (ordered batches of documents, one tokenizer per worker process) and makes the rows the
stream makes, with the same code (`hf_stream.packed` / `hf_stream.padded`): documents joined
with EOS and cut into `seq_len` blocks, or one truncated, padded document per row. The rows go
to shards of at most `SHARD_BLOCKS` rows, `uint16` where the vocabulary fits (else `uint32`),
with each row's length before padding (`int32`, padded rows only), under
`$LRLAB_CACHE/prepared/<key>/`, where key = sha256 of (source, its files, the tokenizer's
content, seq_len, packing, text field, split). The folder is written beside its place and
renamed into it when complete, so an interrupted prepare leaves nothing a run could read.

`data.prepared=true` trains from the shards: row k of the prepared split is row k of the stream
(one process), so a prepared run sees the streamed run's blocks in the same order. Every
global batch is rows [b·B·w, (b+1)·B·w) and rank r of w takes rows r, r+w, ... of it
(`EpochBatchSampler`), so the global batch does not depend on the number of processes, loader
workers fetch whole batches (no duplicates), and a resume seeks: the checkpointed position is
(epoch, batches consumed) and the next batch is read at its offset. A batch is one slice of a
memory map (`__getitems__`), converted to int64 once.
"""

import hashlib
import json
import multiprocessing
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lrlab.errors import ConfigError, require

SHARD_BLOCKS = 1 << 16
DOCS_PER_TASK = 256


def prepared_root() -> Path:
    from lrlab.data.fetch import cache_root

    return cache_root() / "prepared"


def _files_identity(data_files) -> list:
    """Each local file's path, size and content hash; remote names as given."""
    if data_files is None:
        return []
    items = data_files.items() if isinstance(data_files, dict) else [("train", data_files)]
    identity = []
    for split, paths in sorted(items):
        for path in [paths] if isinstance(paths, str) else list(paths):
            local = Path(path)
            if local.is_file():
                digest = hashlib.sha256()
                with open(local, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 24), b""):
                        digest.update(chunk)
                identity.append([split, str(local.resolve()), local.stat().st_size, digest.hexdigest()])
            else:
                identity.append([split, str(path)])
    return identity


def _tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()


def cache_key(source: dict, tokenizer, split: str) -> str:
    """sha256 of what decides the rows: source, files, tokenizer content, seq_len, packing, split."""
    described = {"dataset": source["dataset"], "name": source.get("name"), "split": split,
                 "files": _files_identity(source.get("data_files")), "text_field": source.get("text_field", "text"),
                 "tokenizer": [source["tokenizer"], _tokenizer_identity(tokenizer)],
                 "seq_len": int(source["seq_len"]), "pack": bool(source.get("pack", True))}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]


# --- preparing -------------------------------------------------------------------------------
_WORKER: dict = {}


def _start_worker(tokenizer_name: str, room: int | None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process per core already
    from lrlab.data.hf_stream import load_tokenizer

    _WORKER["tokenizer"], _WORKER["room"] = load_tokenizer(tokenizer_name), room


def _tokenize(texts: list[str]) -> list[list[int]]:
    """The stream's tokenizer call for a batch of documents (truncated to `room` when padding)."""
    room = _WORKER["room"]
    if room is None:
        return _WORKER["tokenizer"](texts, add_special_tokens=False)["input_ids"]
    return _WORKER["tokenizer"](texts, add_special_tokens=False, truncation=True, max_length=room)["input_ids"]


def _batches(documents: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for text in documents:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class _ShardWriter:
    """Rows appended in order, flushed to `shard_NNNNN.tokens` (+ `.lengths`) every SHARD_BLOCKS rows."""

    def __init__(self, folder: Path, seq_len: int, dtype: np.dtype, padded: bool):
        self.folder, self.padded = folder, padded
        self.rows = np.empty((SHARD_BLOCKS, seq_len), dtype=dtype)
        self.lengths = np.empty(SHARD_BLOCKS, dtype=np.int32)
        self.count, self.shards = 0, []

    def add(self, row: list[int], length: int) -> None:
        self.rows[self.count] = row
        self.lengths[self.count] = length
        self.count += 1
        if self.count == SHARD_BLOCKS:
            self.flush()

    def flush(self) -> None:
        if not self.count:
            return
        name = f"shard_{len(self.shards):05d}"
        self.rows[:self.count].tofile(self.folder / f"{name}.tokens")
        if self.padded:
            self.lengths[:self.count].tofile(self.folder / f"{name}.lengths")
        self.shards.append({"name": name, "rows": self.count})
        self.count = 0


def prepare_split(source: dict, split: str, workers: int | None = None, progress: bool = True) -> Path:
    """Tokenize `split` of `source` (the data config's keys) into shards; returns their folder
    (already there: returned at once)."""
    from lrlab.data.hf_stream import PackedStream, load_tokenizer, packed, padded

    tokenizer = load_tokenizer(source["tokenizer"])
    require(len(tokenizer) <= int(source["vocab_size"]), "data.vocab_size", source["vocab_size"],
            f"must be >= the tokenizer's {len(tokenizer)} tokens")
    folder = prepared_root() / cache_key(source, tokenizer, split)
    if (folder / "index.json").is_file():
        return folder
    seq_len, pack = int(source["seq_len"]), bool(source.get("pack", True))
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    room = None if pack else seq_len - (eos is not None)
    stream = PackedStream(source["dataset"], source.get("name"), split, source.get("data_files"),
                          source.get("text_field", "text"), tokenizer, seq_len, None, pack)
    dtype = np.uint16 if int(source["vocab_size"]) <= 1 << 16 else np.uint32
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    writer = _ShardWriter(partial, seq_len, dtype, not pack)
    workers = workers or os.cpu_count() or 1
    bar = _progress(progress, split)
    try:
        counted = [0]
        with _tokenizing(workers, source["tokenizer"], room) as tokenize:
            token_lists = _flatten(tokenize(_tokenize, _batches(stream.documents(), DOCS_PER_TASK)), counted, bar)
            rows = packed(token_lists, seq_len, eos) if pack else padded(token_lists, seq_len, eos, pad)
            for row, length in rows:
                writer.add(row, length)
        writer.flush()
        require(bool(writer.shards), "data.dataset", source["dataset"],
                f"split {split!r} holds no block of data.seq_len={seq_len} tokens")
        index = {"seq_len": seq_len, "pack": pack, "dtype": np.dtype(dtype).name, "shards": writer.shards,
                 "document_tokens": counted[0]}
        (partial / "index.json").write_text(json.dumps(index, indent=1))
        os.replace(partial, folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if bar is not None:
            bar.close()
    return folder


@contextmanager
def _tokenizing(workers: int, tokenizer_name: str, room: int | None):
    """An ordered map over `workers` processes (in this process for one)."""
    if workers == 1:
        _start_worker(tokenizer_name, room)
        yield map
        return
    with multiprocessing.get_context("spawn").Pool(workers, _start_worker, (tokenizer_name, room)) as pool:
        yield lambda fn, tasks: _bounded_imap(pool, fn, tasks, 4 * workers)


def _bounded_imap(pool, fn, tasks: Iterator, window: int) -> Iterator:
    """`pool.imap` that reads at most `window` tasks ahead (imap would read the whole corpus
    into its queue when the workers outpace the consumer)."""
    pending = deque()
    for task in tasks:
        pending.append(pool.apply_async(fn, (task,)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _progress(shown: bool, split: str):
    if not shown:
        return None
    from tqdm import tqdm

    return tqdm(desc=f"prepare {split}", unit=" tok", unit_scale=True, file=sys.stderr, mininterval=1.0)


def _flatten(batches: Iterator[list[list[int]]], counted: list, bar) -> Iterator[list[int]]:
    """The documents' token lists in order; their tokens are added to counted[0] (and the bar)."""
    for batch in batches:
        tokens = sum(len(ids) for ids in batch)
        counted[0] += tokens
        if bar is not None:
            bar.update(tokens)
        yield from batch


def find_prepared(source: dict, split: str) -> Path:
    """The prepared folder of `split`, or one line naming the command that makes it."""
    from lrlab.data.hf_stream import load_tokenizer

    folder = prepared_root() / cache_key(source, load_tokenizer(source["tokenizer"]), split)
    if not (folder / "index.json").is_file():
        raise ConfigError("data.prepared", True, f"no prepared shards of split {split!r} at {folder}: run "
                          "`lrlab data prepare DATA` with the same data overrides first")
    return folder


# --- reading ---------------------------------------------------------------------------------
class PreparedBlocks(Dataset):
    """The rows of a prepared split, memory-mapped; `__getitems__` reads a batch at once."""

    def __init__(self, folder: Path, max_rows: int | None = None):
        index = json.loads((Path(folder) / "index.json").read_text())
        self.seq_len, self.padded = index["seq_len"], not index["pack"]
        dtype = np.dtype(index["dtype"])
        self.tokens = [np.memmap(folder / f"{s['name']}.tokens", dtype=dtype, mode="r").reshape(s["rows"], self.seq_len)
                       for s in index["shards"]]
        self.lengths = ([np.memmap(folder / f"{s['name']}.lengths", dtype=np.int32, mode="r") for s in index["shards"]]
                        if self.padded else None)
        self.starts = np.cumsum([0] + [s["rows"] for s in index["shards"]])
        self.rows = int(self.starts[-1]) if max_rows is None else min(int(self.starts[-1]), max_rows)

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, k: int) -> dict:
        return {key: value[0] for key, value in self.__getitems__([k]).items()}

    def __getitems__(self, rows: list[int]) -> dict:
        ids = torch.from_numpy(self._read(self.tokens, rows).astype(np.int64))
        labels = ids.clone()
        if self.padded:
            lengths = torch.from_numpy(self._read(self.lengths, rows).astype(np.int64))
            labels[torch.arange(self.seq_len) >= lengths[:, None]] = -100
        return {"input_ids": ids, "labels": labels, "index": torch.as_tensor(rows)}

    def _read(self, arrays: list[np.ndarray], rows: list[int]) -> np.ndarray:
        """Rows by global number: one slice when they are consecutive within a shard."""
        first, last = rows[0], rows[-1]
        shard = int(np.searchsorted(self.starts, first, side="right")) - 1
        base = int(self.starts[shard])
        if last - first == len(rows) - 1 and last < self.starts[shard + 1]:
            return np.asarray(arrays[shard][first - base:last - base + 1])
        picked = []
        for row in rows:
            shard = int(np.searchsorted(self.starts, row, side="right")) - 1
            picked.append(np.asarray(arrays[shard][row - int(self.starts[shard])]))
        return np.stack(picked)


def validation_rows(rows: PreparedBlocks, max_rows: int | None, max_tokens: int | None) -> PreparedBlocks:
    """The rows the stream's validation reads: `max_rows`, or rows until they hold `max_tokens`
    non-padding tokens (the row that reaches the count included)."""
    count = rows.rows if max_rows is None else min(rows.rows, max_rows)
    if max_tokens is not None:
        lengths = (np.concatenate([np.asarray(x) for x in rows.lengths]) if rows.padded
                   else np.full(rows.rows, rows.seq_len))
        reached = np.searchsorted(np.cumsum(lengths, dtype=np.int64), max_tokens)
        count = min(count, int(reached) + 1)
    rows.rows = count
    return rows


def batch_as_is(batch: dict) -> dict:
    """The collate of a dataset whose `__getitems__` already returns the batch."""
    return batch


# --- the command -----------------------------------------------------------------------------
def command(arguments: list[str]) -> None:
    """`lrlab data prepare DATA [overrides]`: both splits of DATA, printed with their folders."""
    from omegaconf import OmegaConf

    from lrlab.train import compose

    require(bool(arguments) and "=" not in arguments[0], "data", None,
            "data prepare needs DATA first: a streamed data config, e.g. `lrlab data prepare hf_text "
            "data.dataset=text data.data_files=... data.tokenizer=...`")
    cfg = compose([f"data={arguments[0]}", *arguments[1:]])
    source = OmegaConf.to_container(cfg.data, resolve=True)
    require(source.get("_target_", "").endswith("HFTextStream"), "data", arguments[0],
            "must be a streamed corpus (hf_text, c4): the others are already held as token arrays")
    for split in (source["split"], source["val_split"]):
        folder = prepare_split(source, split)
        index = json.loads((folder / "index.json").read_text())
        rows = sum(s["rows"] for s in index["shards"])
        print(f"{split}: {rows} rows of {index['seq_len']} tokens ({index['dtype']}) in {folder}")
