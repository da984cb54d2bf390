"""`lrlab data prepare`: write the prepared token shards that `lrlab.data.prepared` reads (the
rule, the layout and the cache key are in that module's docstring)."""

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

from lrlab.data.prepared import SHARD_BLOCKS, cache_key, prepared_root
from lrlab.errors import require

DOCS_PER_TASK = 256


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
