"""Prepared token shards: tokenize a streamed corpus once, then train from memory-mapped blocks.
This module reads them; `lrlab.data.prepare` writes them.

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
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lrlab.errors import ConfigError

SHARD_BLOCKS = 1 << 16


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


def find_prepared(source: dict, tokenizer, split: str) -> Path:
    """The prepared folder of `split`, or one line naming the command that makes it."""
    folder = prepared_root() / cache_key(source, tokenizer, split)
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
