"""MiniLM + WordNet lexicographer classification: data parsing, the model, one runner smoke."""

import pytest
import torch

from lrlab.data.text_classify import balanced_subset, read_glosses
from lrlab.train import run

LINES = [
    "  1 This software and database is being provided\n",
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived to exist\n",
    "00001837 02 r 03 AD 0 A.D. 0 anno_Domini 0 000 | in the Christian era; \"in AD 200\"  \n",
    "01234567 29 v 01 breathe 0 000 | draw air into, and expel out of, the lungs\n",
]


def test_read_glosses_takes_text_after_bar_and_lex_filenum():
    assert read_glosses(LINES) == [("that which is perceived to exist", 3),
                                   ("in the Christian era; \"in AD 200\"", 2),
                                   ("draw air into, and expel out of, the lungs", 29)]


def test_balanced_subset_caps_each_class_and_is_seeded():
    entries = [(f"t{i}", i % 3) for i in range(30)]
    subset = balanced_subset(entries, per_class=4, seed=1)
    assert sorted(label for _, label in subset) == [0] * 4 + [1] * 4 + [2] * 4
    assert subset == balanced_subset(entries, per_class=4, seed=1)
    assert subset != balanced_subset(entries, per_class=4, seed=2)


@pytest.mark.network
def test_minilm_lora_on_wordnet_through_the_runner(make_cfg, wordnet):
    summary = run(make_cfg("experiment=lora/minilm_wordnet_lora", "trainer.max_steps=2",
                           "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "data.per_class=3"))
    assert summary["status"] == "completed"
    lora = 2 * 6 * 8 * (384 + 384)
    assert summary["trainable_params"] == lora + 384 * 45 + 45
    assert summary["total_params"] > 22_000_000


def test_minilm_features_are_masked_means():
    from lrlab.data.tokenizers import minilm_tokenizer
    from lrlab.models.minilm import build

    model = build(num_classes=4).eval()
    batch = minilm_tokenizer()(["a small dog", "a small dog barked loudly at night"], padding=True, return_tensors="pt")
    x = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        padded = model(x)["features"][0]
        alone = model({k: v[:1, : int(batch["attention_mask"][0].sum())] for k, v in x.items()})["features"][0]
    assert torch.allclose(padded, alone, atol=1e-5)


@pytest.mark.network
def test_galore_full_fine_tuning_of_minilm_projects_every_bert_linear(make_cfg, wordnet):
    from lrlab.models.minilm import build
    from lrlab.optim.routing import split_params

    cfg = make_cfg("experiment=galore/minilm_wordnet", "trainer.max_steps=2", "trainer.val_check_interval=2",
                   "trainer.limit_val_batches=1", "data.per_class=3")
    projected, regular = split_params(build(num_classes=45), cfg.optimizer.target_modules)
    assert len(projected) == 6 * 6  # query, key, value, attention.output.dense, intermediate.dense, output.dense
    assert not any("head" in name or "pooler" in name for name, _ in projected)
    summary = run(cfg)
    assert summary["status"] == "completed" and summary["trainable_params"] > 22_000_000
