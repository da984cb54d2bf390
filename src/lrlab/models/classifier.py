"""Classifiers as a feature `body` and a linear `head`.

`forward(x)` returns `{"logits", "features"}`: the head's input (the penultimate features) and its
output. Methods that transform features hook the `head` (see `lrlab.tasks.classify`).
"""

import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int, bias: bool = True):
        super().__init__()
        self.body = body
        self.head = nn.Linear(feature_dim, num_classes, bias=bias)

    def forward(self, x: torch.Tensor) -> dict:
        features = self.body(x)
        return {"logits": self.head(features), "features": features}


def mlp(input_dim: int, num_classes: int, hidden: tuple[int, ...] = (256, 256), dropout: float = 0.0,
        activation: str = "relu", bias: bool = True) -> Classifier:
    """`bias: false` drops every bias, as the grokking reference MLP does."""
    act = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}[activation]
    layers, width = [nn.Flatten()], input_dim
    for h in hidden:
        layers += [nn.Linear(width, h, bias=bias), act()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    return Classifier(nn.Sequential(*layers), width, num_classes, bias)


def cnn(in_channels: int, num_classes: int, channels: tuple[int, ...] = (32, 64), dropout: float = 0.0) -> Classifier:
    layers, width = [], in_channels
    for c in channels:
        layers += [nn.Conv2d(width, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2)]
        width = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return Classifier(nn.Sequential(*layers), width, num_classes)
