"""Pretrained-then-fine-tuned miniatures: class subsets, the cached pretraining, the fresh head."""

import numpy as np
import pytest
import torch

from lrlab.data.images import Digits, select_classes
from lrlab.errors import ConfigError
from lrlab.models import pretrained
from lrlab.train import compose

SMALL = {"steps": 40, "batch_size": 32}


def test_select_classes_keeps_and_relabels_in_the_given_order():
    x, y = np.arange(5)[:, None], np.array([0, 5, 7, 5, 9])
    kept_x, kept_y = select_classes(x, y, [9, 5])
    assert kept_x[:, 0].tolist() == [1, 3, 4] and kept_y.tolist() == [1, 1, 0]
    # a split (e.g. a fixed validation set) may lack the largest requested class
    kept_x, kept_y = select_classes(x[:4], y[:4], [5, 9])
    assert kept_x[:, 0].tolist() == [1, 3] and kept_y.tolist() == [0, 0]


def test_digit_subset_and_its_class_count_in_the_config():
    train, val = Digits(classes=[5, 6, 7, 8, 9], seed=0).build()
    labels = torch.cat([train.y, val.y])
    assert set(labels.tolist()) == {0, 1, 2, 3, 4} and len(labels) == 896  # sklearn has 896 digits 5-9
    assert compose(["data=digits", "data.classes=[5,6,7,8,9]"]).data.info.num_classes == 5
    assert compose(["data=digits"]).data.info.num_classes == 10
    with pytest.raises(ConfigError):
        Digits(classes=[3, 3])
    with pytest.raises(ConfigError):
        Digits(classes=[8, 10])


@pytest.mark.slow
def test_first_build_pretrains_and_caches_later_builds_load(tmp_path, monkeypatch):
    monkeypatch.setenv("LRLAB_CACHE", str(tmp_path))
    torch.manual_seed(7)
    first = pretrained.mlp(64, 5, hidden=(32,), pretrain=SMALL)
    (path,) = (tmp_path / "models" / "mlp_pretrained").glob("*.pt")
    saved = torch.load(path, weights_only=True)
    assert saved["val_acc"] > 0.9  # digits 0-4 after 40 steps
    monkeypatch.setattr(pretrained, "pretrain", lambda *args: pytest.fail("pretrained again"))
    torch.manual_seed(7)
    second = pretrained.mlp(64, 5, hidden=(32,), pretrain=SMALL)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)  # same body from the cache, same head from the run's seed
    assert second.head.out_features == 5 and torch.equal(second.body[1].weight, saved["state_dict"]["body.1.weight"])


def test_the_cache_key_follows_the_settings():
    settings = {**pretrained.PRETRAIN_DEFAULTS, **SMALL}
    arch = {"input_dim": 64, "hidden": [32], "activation": "relu"}
    path = pretrained.checkpoint_path("mlp", arch, settings)
    assert path == pretrained.checkpoint_path("mlp", dict(reversed(arch.items())), dict(settings))
    assert path != pretrained.checkpoint_path("mlp", arch, {**settings, "steps": 41})
    assert path != pretrained.checkpoint_path("cnn", arch, settings)


def test_bad_pretraining_input_is_a_config_error():
    with pytest.raises(ConfigError):
        pretrained.mlp(784, 5, pretrain={"data": "digits"})  # digits are 64 wide
    with pytest.raises(ConfigError):
        pretrained.mlp(64, 5, pretrain={"data": "cifar"})
