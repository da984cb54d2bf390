"""Pretrained-then-fine-tuned CPU miniatures: an MLP or CNN pretrained on some classes of an image
dataset, cached, then given a fresh head for the fine-tuning classes.

The first build pretrains (AdamW, `steps` steps of `batch_size`, seconds on a CPU) on the
`pretrain.classes` of `pretrain.data` with its own seed, and saves the weights and the
pretraining validation accuracy to `<lrlab cache>/models/<arch>_pretrained/<key>.pt`, where
the key hashes the architecture and the pretraining settings; later builds load that file.
The returned model has the pretrained body and a new linear head with `num_classes` outputs,
drawn from the run's seed. With the default digits 0-4 for pretraining and
`data.classes=[5,6,7,8,9]` for fine-tuning, the two halves share no class and so no image.
"""

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lrlab.data.fetch import cache_root
from lrlab.data.images import Digits, FashionMNIST, MNIST5k
from lrlab.errors import require
from lrlab.models import classifier

DATASETS = {"digits": Digits, "mnist5k": MNIST5k, "fashion_mnist": FashionMNIST}
PRETRAIN_DEFAULTS = {"data": "digits", "classes": [0, 1, 2, 3, 4], "steps": 200, "batch_size": 64, "lr": 1e-3,
                     "seed": 0}


def checkpoint_path(arch: str, arch_kwargs: dict, pretrain: dict) -> Path:
    settings = json.dumps({"arch": arch, **arch_kwargs, "pretrain": pretrain}, sort_keys=True)
    return cache_root() / "models" / f"{arch}_pretrained" / f"{hashlib.sha256(settings.encode()).hexdigest()[:16]}.pt"


def _accuracy(model: nn.Module, data) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(data.x)["logits"].argmax(-1) == data.y).float().mean()
    model.train()
    return float(correct)


def pretrain(model: nn.Module, settings: dict) -> float:
    """Train `model` on the pretraining classes; returns its accuracy on their validation split."""
    datamodule = DATASETS[settings["data"]](classes=settings["classes"], seed=settings["seed"])
    train, val = datamodule.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["lr"])
    generator = torch.Generator().manual_seed(settings["seed"])
    model.train()
    for _ in range(settings["steps"]):
        index = torch.randint(len(train), (settings["batch_size"],), generator=generator)
        loss = F.cross_entropy(model(train.x[index])["logits"], train.y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return _accuracy(model, val)


def load_or_pretrain(arch: str, arch_kwargs: dict, settings: dict) -> classifier.Classifier:
    """The pretrained classifier (pretraining head included), from the cache when it is there."""
    path = checkpoint_path(arch, arch_kwargs, settings)
    with torch.random.fork_rng():  # pretraining never shifts the run's random stream
        torch.manual_seed(settings["seed"])
        model = getattr(classifier, arch)(num_classes=len(settings["classes"]), **arch_kwargs)
        if not path.exists():
            accuracy = pretrain(model, settings)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            torch.save({"state_dict": model.state_dict(), "val_acc": accuracy, "settings": settings}, partial)
            os.replace(partial, path)
    model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
    return model


def _settings(pretrain: dict | None, features: str, value: int) -> dict:
    settings = {**PRETRAIN_DEFAULTS, **(pretrain or {})}
    require(settings["data"] in DATASETS, "model.pretrain.data", settings["data"], f"one of {sorted(DATASETS)}")
    expected = getattr(DATASETS[settings["data"]], features)
    require(value == expected, f"model.{features}", value, f"{expected}, the input of {settings['data']}")
    require(settings["steps"] >= 1, "model.pretrain.steps", settings["steps"], "an integer >= 1")
    return settings


def _with_new_head(model: classifier.Classifier, num_classes: int) -> classifier.Classifier:
    model.head = nn.Linear(model.head.in_features, num_classes)
    return model


def mlp(input_dim: int, num_classes: int, hidden: tuple[int, ...] = (256, 256), activation: str = "relu",
        pretrain: dict | None = None) -> classifier.Classifier:
    settings = _settings(pretrain, "input_dim", input_dim)
    arch = {"input_dim": input_dim, "hidden": list(hidden), "activation": activation}
    return _with_new_head(load_or_pretrain("mlp", arch, settings), num_classes)


def cnn(in_channels: int, num_classes: int, channels: tuple[int, ...] = (32, 64),
        pretrain: dict | None = None) -> classifier.Classifier:
    settings = _settings(pretrain, "in_channels", in_channels)
    arch = {"in_channels": in_channels, "channels": list(channels)}
    return _with_new_head(load_or_pretrain("cnn", arch, settings), num_classes)
