"""Text classification: WordNet glosses labelled with their lexicographer file (45 classes).

Each synset line of `data.noun|verb|adj|adv` gives a gloss (the text after `|`) and its
`lex_filenum` (field 1, 0-based), e.g. 05 = noun.animal, 29 = verb.body. The split is seeded;
`per_class` caps each class so a small, roughly balanced subset trains on a CPU. Texts are
tokenised once with the MiniLM tokenizer to `max_length` tokens. Fetch: `lrlab data fetch wordnet`.
"""

import random

import torch
from torch.utils.data import Dataset

from lrlab.data.base import BaseDataModule
from lrlab.data.fetch import require as require_data
from lrlab.data.noise import corrupt
from lrlab.errors import require

NUM_LEX_CLASSES = 45
PARTS = ("noun", "verb", "adj", "adv")


def read_glosses(lines) -> list[tuple[str, int]]:
    """(gloss, lex_filenum) per synset line; license lines start with spaces and are skipped."""
    entries = []
    for line in lines:
        if line.startswith(" ") or "|" not in line:
            continue
        fields, gloss = line.split("|", 1)
        entries.append((gloss.strip(), int(fields.split()[1])))
    return entries


def balanced_subset(entries, per_class: int | None, seed: int) -> list[tuple[str, int]]:
    shuffled = list(entries)
    random.Random(seed).shuffle(shuffled)
    if per_class is None:
        return shuffled
    counts, kept = {}, []
    for text, label in shuffled:
        if counts.get(label, 0) < per_class:
            counts[label] = counts.get(label, 0) + 1
            kept.append((text, label))
    return kept


class TokenizedTexts(Dataset):
    def __init__(self, encoded: dict, y: torch.Tensor, y_clean: torch.Tensor):
        self.input_ids, self.attention_mask = encoded["input_ids"], encoded["attention_mask"]
        self.y, self.y_clean = y, y_clean

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        x = {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i]}
        return {"x": x, "y": self.y[i], "y_clean": self.y_clean[i], "index": torch.tensor(i)}


class WordNetLex(BaseDataModule):
    num_classes = NUM_LEX_CLASSES

    def __init__(self, per_class: int | None = 40, val_fraction: float = 0.2, max_length: int = 32,
                 noise: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        require(per_class is None or per_class >= 2, "data.per_class", per_class, "an integer >= 2 or null")
        require(0 < val_fraction < 1, "data.val_fraction", val_fraction, "a fraction in (0, 1)")
        require(max_length >= 4, "data.max_length", max_length, "an integer >= 4")
        self.per_class, self.val_fraction, self.max_length = per_class, val_fraction, max_length
        self.noise = dict(noise or {})  # corrupt()'s defaults: no noise

    def entries(self) -> list[tuple[str, int]]:
        root = require_data("wordnet")
        entries = []
        for part in PARTS:
            with open(root / f"data.{part}", encoding="utf-8", errors="replace") as handle:
                entries += read_glosses(handle)
        return entries

    def encode(self, texts: list[str]) -> dict:
        from lrlab.data.tokenizers import minilm_tokenizer

        return minilm_tokenizer()(texts, padding="max_length", truncation=True, max_length=self.max_length,
                           return_tensors="pt")

    def build(self):
        subset = balanced_subset(self.entries(), self.per_class, self.seed)
        n_val = max(1, int(len(subset) * self.val_fraction))
        val, train = subset[:n_val], subset[n_val:]
        y = torch.tensor([label for _, label in train])
        noisy = corrupt(y, self.num_classes, **self.noise)
        y_val = torch.tensor([label for _, label in val])
        return (TokenizedTexts(self.encode([t for t, _ in train]), noisy, y),
                TokenizedTexts(self.encode([t for t, _ in val]), y_val, y_val))
