"""Language-modelling corpora as fixed-length token blocks.

`TokenBlocks` cuts a 1-D token array into non-overlapping blocks of `seq_len`; a sample is
`{"input_ids", "labels", "index"}` (the model shifts labels itself). The zero-setup corpus is
Python's standard-library source read as bytes (vocab 256); its token array is cached under
the user cache dir with the Python version and a content hash, which the run records.
"""

import hashlib
import sys
import sysconfig
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lrlab.data import fetch
from lrlab.data.base import BaseDataModule
from lrlab.errors import require


class TokenBlocks(Dataset):
    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens, self.seq_len = tokens, seq_len

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def __getitem__(self, i: int) -> dict:
        block = torch.from_numpy(self.tokens[i * self.seq_len:(i + 1) * self.seq_len].astype(np.int64))
        return {"input_ids": block, "labels": block, "index": torch.tensor(i)}


class LMDataModule(BaseDataModule):
    """Holds a train/val token split; subclasses implement `tokens()`."""

    task = "causal_lm"

    def __init__(self, seq_len: int = 128, vocab_size: int = 256, val_fraction: float = 0.05,
                 max_tokens: int | None = None, **kwargs):
        super().__init__(**kwargs)
        require(seq_len > 0, "data.seq_len", seq_len, "must be a positive integer")
        require(0 < val_fraction < 1, "data.val_fraction", val_fraction, "must be in (0, 1)")
        self.seq_len, self.vocab_size = seq_len, vocab_size
        self.val_fraction, self.max_tokens = val_fraction, max_tokens
        self.source_info: dict = {}

    def tokens(self) -> np.ndarray:
        raise NotImplementedError

    def hf_tokenizer(self):
        """The corpus's tokenizer as a Hugging Face tokenizer (exported with the model); None
        where the corpus has none."""
        return None

    def build(self):
        tokens = self.tokens()
        if self.max_tokens:
            tokens = tokens[: self.max_tokens]
        require(len(tokens) > 0, "data", type(self).__name__, "the corpus is empty")
        top = int(tokens.max())
        require(top < self.vocab_size, "data.vocab_size", self.vocab_size, f"must exceed the largest token id {top}")
        n_val = max(self.seq_len, int(len(tokens) * self.val_fraction))
        return TokenBlocks(tokens[:-n_val], self.seq_len), TokenBlocks(tokens[-n_val:], self.seq_len)


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "idlelib", "lib2to3", "__pycache__")
    return sorted(p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts))


class StdlibBytes(LMDataModule):
    """Byte-level LM on Python's standard-library source: needs no download at all."""

    def __init__(self, max_files: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_files = max_files

    def hf_tokenizer(self):
        return byte_tokenizer()

    def tokens(self) -> np.ndarray:
        paths = stdlib_files()[: self.max_files] if self.max_files else stdlib_files()
        digest = hashlib.sha256("\n".join(str(p) for p in paths).encode())
        for p in paths:
            digest.update(str(p.stat().st_size).encode())
        key = f"py{sys.version_info.major}.{sys.version_info.minor}-{digest.hexdigest()[:16]}"
        cache = fetch.cache_root() / "tokens" / f"stdlib-{key}.u8"
        if not cache.exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            data = b"\n".join(p.read_bytes() for p in paths)
            tmp = cache.with_suffix(".partial")
            tmp.write_bytes(data)
            tmp.rename(cache)
        self.source_info = {"corpus": "python-stdlib", "python": sys.version.split()[0], "key": key}
        return np.fromfile(cache, dtype=np.uint8)


def byte_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (Radford et al., 2019, `encoder.py`
    of openai/gpt-2): printable Latin-1 bytes map to themselves, the rest to 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return table


def byte_tokenizer():
    """A Hugging Face tokenizer whose ids are the text's UTF-8 bytes (id = byte value), as the
    byte corpora tokenize: byte-level BPE with the 256 byte symbols and no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {char: byte for byte, char in byte_unicode().items()}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)
