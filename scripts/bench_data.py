"""Measure how long each data module takes to build, cold (empty token cache) and warm.

Usage: python scripts/bench_data.py  (needs `lrlab data fetch mnist5k fashion_mnist wordnet shakespeare python_docs`)
Cold times use a temporary LRLAB_CACHE holding links to the fetched data but no token caches.
"""

import os
import tempfile
import time
from pathlib import Path

from lrlab.data import fetch
from lrlab.data.bpe import BPECorpus
from lrlab.data.images import Digits, FashionMNIST, MNIST5k
from lrlab.data.modular import ModularArithmetic
from lrlab.data.text import StdlibBytes

MODULES = {
    "digits": lambda: Digits(seed=0),
    "mnist5k": lambda: MNIST5k(seed=0),
    "fashion_mnist": lambda: FashionMNIST(seed=0),
    "modular_arithmetic": lambda: ModularArithmetic(seed=0),
    "stdlib_bytes": lambda: StdlibBytes(seed=0),
    "shakespeare": lambda: BPECorpus("shakespeare", vocab_size=8192, seed=0),
    "wordnet_glosses": lambda: BPECorpus("wordnet_glosses", vocab_size=8192, seed=0),
    "python_docs": lambda: BPECorpus("python_docs", vocab_size=8192, seed=0),
}


def timed_build(make) -> tuple[float, int, int]:
    start = time.perf_counter()
    train, val = make().build()
    return time.perf_counter() - start, len(train), len(val)


def main() -> None:
    fetched = fetch.cache_root() / "data"
    with tempfile.TemporaryDirectory() as cold:
        (Path(cold) / "data").symlink_to(fetched)
        print("| data | train | val | cold build (s) | warm build (s) |\n|---|---|---|---|---|")
        for name, make in MODULES.items():
            os.environ["LRLAB_CACHE"] = cold
            cold_s, n_train, n_val = timed_build(make)
            warm_s, _, _ = timed_build(make)
            print(f"| {name} | {n_train} | {n_val} | {cold_s:.2f} | {warm_s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
