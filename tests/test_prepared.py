"""Prepared token shards: the stream's rows in the stream's order, a cache keyed by what decides
them, loader workers without duplicates, rank slices of one global batch, a resume that seeks,
and a prepared run equal to the streamed run."""

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import write_corpus

from lrlab.data import loader as loader_module
from lrlab.data.prepare import prepare_split
from lrlab.data.prepared import PreparedBlocks, batch_as_is


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Local text files and a BPE tokenizer with its own pad token."""
    return write_corpus(tmp_path_factory.mktemp("corpus"), pad_token="<pad>")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LRLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def source(corpus: Path, **changes) -> dict:
    return {"dataset": "text", "name": None, "text_field": "text", "tokenizer": str(corpus / "tokenizer"),
            "vocab_size": 320, "seq_len": 32, "pack": True, "split": "train", "val_split": "validation",
            "data_files": {"train": str(corpus / "train.txt"), "validation": str(corpus / "val.txt")}, **changes}


def streamed(corpus: Path, **changes) -> list[dict]:
    from lrlab.data.hf_stream import HFTextStream

    data = source(corpus, **changes)
    module = HFTextStream(dataset="text", tokenizer=data["tokenizer"], vocab_size=320, data_files=data["data_files"],
                          seq_len=data["seq_len"], pack=data["pack"])
    module.setup()
    return list(module._stream("train", None))


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
def test_prepared_rows_are_the_stream_rows_in_order(corpus, cache, pack):
    folder = prepare_split(source(corpus, pack=pack), "train", workers=2 if pack else 1, progress=False)
    rows = PreparedBlocks(folder)
    reference = streamed(corpus, pack=pack)
    assert len(rows) == len(reference) > 100
    for k, row in enumerate(reference):
        got = rows[k]
        assert torch.equal(got["input_ids"], row["input_ids"]) and torch.equal(got["labels"], row["labels"]), k
    index = json.loads((folder / "index.json").read_text())
    assert index["dtype"] == "uint16" and (cache / "prepared" / folder.name).is_dir()
    assert (not pack) == any((row["labels"] == -100).any() for row in reference)


def test_cache_key_follows_what_decides_the_rows(corpus, cache):
    first = prepare_split(source(corpus), "train", workers=1, progress=False)
    assert prepare_split(source(corpus), "train", workers=1, progress=False) == first  # reused
    others = {prepare_split(source(corpus, **change), "train", workers=1, progress=False)
              for change in ({"seq_len": 16}, {"pack": False})}
    assert first not in others and len(others) == 2
    assert not list((cache / "prepared").glob("*.partial-*"))


def _loader(rows, batch_size: int, position=(0, 0), **kwargs):
    return loader_module.ResumableLoader(rows, batch_size, False, 0, lambda: position, collate_fn=batch_as_is, **kwargs)


def test_workers_read_every_row_once_in_order(corpus, cache):
    rows = PreparedBlocks(prepare_split(source(corpus), "train", workers=1, progress=False))
    seen = torch.cat([batch["index"] for batch in _loader(rows, 4, num_workers=2)])
    assert seen.tolist() == list(range(len(rows) // 4 * 4))


def test_rank_slices_make_the_same_global_batch(corpus, cache, monkeypatch):
    rows = PreparedBlocks(prepare_split(source(corpus), "train", workers=1, progress=False))
    single = [batch["input_ids"] for batch in _loader(rows, 8)]
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(loader_module, "_rank_world", lambda rank=rank: (rank, 2))
        per_rank.append([batch["input_ids"] for batch in _loader(rows, 4)])
    assert len(per_rank[0]) == len(single)
    for whole, first, second in zip(single, *per_rank):
        assert torch.equal(whole[0::2], first) and torch.equal(whole[1::2], second)


def test_resume_seeks_to_the_batch(corpus, cache):
    rows = PreparedBlocks(prepare_split(source(corpus), "train", workers=1, progress=False))
    straight = [batch["index"].tolist() for batch in _loader(rows, 4)]
    resumed = _loader(rows, 4)
    started = time.perf_counter()
    resumed.load_state_dict({"epoch": 0, "batches": 7})
    first = next(iter(resumed))["index"].tolist()
    assert first == straight[7] and time.perf_counter() - started < 1.0


HF = ["data=hf_text", "data.dataset=text", "data.vocab_size=320", "data.seq_len=32", "data.batch_size=4",
      "data.val_blocks=8", "model=llama_tiny", "trainer.max_steps=6", "trainer.val_check_interval=3",
      "trainer.limit_val_batches=2", "scheduler=constant", "scheduler.warmup_ratio=0"]


def _hf(corpus: Path) -> list[str]:
    return [*HF, f"data.tokenizer={corpus / 'tokenizer'}",
            f"data.data_files={{train:'{corpus / 'train.txt'}',validation:'{corpus / 'val.txt'}'}}"]


def test_a_prepared_run_equals_the_streamed_run_and_resumes(corpus, cache, make_cfg, cli, tmp_path):
    from lrlab.train import run

    code, out, err = cli("data", "prepare", "hf_text", *_hf(corpus)[1:])
    assert code == 0 and "train:" in out and "validation:" in out, err
    stream = run(make_cfg(*_hf(corpus), run="stream"))
    prepared = run(make_cfg(*_hf(corpus), "data.prepared=true", run="prepared"))
    run(make_cfg(*_hf(corpus), "data.prepared=true", "trainer.max_steps=3", run="split"))
    resumed = run(make_cfg(*_hf(corpus), "data.prepared=true", "resume=auto", run="split"))
    assert prepared["metrics"]["final"] == stream["metrics"]["final"] == resumed["metrics"]["final"]
    weights = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for name in ("stream", "prepared", "split")]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]) and torch.equal(weights[0][key], weights[2][key]), key


def test_missing_shards_are_one_line(corpus, cache, cli, tmp_path):
    code, _, err = cli("train", *_hf(corpus), "data.prepared=true", "logger=none")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: data.prepared=True: no prepared shards")
    assert not (tmp_path / "outputs").exists()
