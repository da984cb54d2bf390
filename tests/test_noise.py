import pytest
import torch

from lrlab.data.noise import corrupt
from lrlab.errors import ConfigError


def test_symmetric_flips_about_rate_to_other_classes():
    labels = torch.arange(10).repeat(2000)
    noisy = corrupt(labels, 10, "symmetric", 0.4, seed=0)
    flipped = noisy != labels
    assert abs(flipped.float().mean().item() - 0.4) < 0.02
    counts = torch.bincount(noisy[flipped & (labels == 3)], minlength=10).float()
    assert counts[3] == 0
    others = counts[torch.arange(10) != 3]
    assert others.min() > 0.7 * others.mean()


def test_asymmetric_flips_to_next_class():
    labels = torch.arange(5).repeat(1000)
    noisy = corrupt(labels, 5, "asymmetric", 0.3, seed=1)
    flipped = noisy != labels
    assert torch.equal(noisy[flipped], (labels[flipped] + 1) % 5)
    assert abs(flipped.float().mean().item() - 0.3) < 0.03


def test_same_seed_same_labels_and_none_is_identity():
    labels = torch.randint(0, 7, (500,))
    assert torch.equal(corrupt(labels, 7, "symmetric", 0.5, 3), corrupt(labels, 7, "symmetric", 0.5, 3))
    assert not torch.equal(corrupt(labels, 7, "symmetric", 0.5, 3), corrupt(labels, 7, "symmetric", 0.5, 4))
    assert torch.equal(corrupt(labels, 7, "none", 0.5), labels)


@pytest.mark.parametrize("kind,rate", [("uniform", 0.2), ("symmetric", 1.0), ("symmetric", -0.1)])
def test_bad_noise_config_raises(kind, rate):
    with pytest.raises(ConfigError):
        corrupt(torch.zeros(4, dtype=torch.long), 3, kind, rate)
