"""Classification: a model returning `{"logits", "features"}` whose last layer is a submodule named
`head` fed with the penultimate features; validation accuracy, ECE (15 bins) and NLL; samples/s.

Methods that transform features (`transform_features`) act on the head's input in training mode,
through a forward pre-hook on `head` registered for the fit.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from lrlab.errors import require
from lrlab.tasks.base import BaseTask


def find_head(model: nn.Module) -> nn.Module | None:
    """The classifier's head: the module named `head` (under any wrapper's prefix)."""
    heads = [m for name, m in model.named_modules() if name == "head" or name.endswith(".head")]
    return heads[0] if heads else None


class ClassifyTask(BaseTask):
    kind = "classify"

    def __init__(self, *args, num_classes: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        num_classes = num_classes or self.num_classes_from_config
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_ece = MulticlassCalibrationError(num_classes, n_bins=15, norm="l1")
        self.val_nll = MeanMetric()
        self._feature_hook = None

    def on_fit_start(self) -> None:
        transforms = self.hooked("transform_features")
        if not transforms:
            return
        head = find_head(self.model)
        require(head is not None, transforms[0].config_key, transforms[0].name,
                f"transforms a classifier's features, but {type(self.model).__name__} has no `head` module")

        def transform(module, args):
            if not module.training:
                return None
            features = args[0]
            for method in transforms:
                features = method.transform_features(features)
            return (features, *args[1:])

        self._feature_hook = head.register_forward_pre_hook(transform)

    def on_fit_end(self) -> None:
        if self._feature_hook is not None:
            self._feature_hook.remove()
            self._feature_hook = None

    def forward_batch(self, batch: dict) -> dict:
        return self.model(batch["x"])

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.forward_batch(batch)
        _, loss = self.training_loss(outputs, batch)
        self.watch_loss(loss)
        self.log_train_loss("train/loss", loss)
        self.log("train/acc", (outputs["logits"].argmax(-1) == batch["y"]).float().mean())
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch["x"])["logits"].float()
        y = batch["y"]
        self.val_acc.update(logits, y)
        self.val_ece.update(logits.softmax(-1), y)
        self.val_nll.update(F.cross_entropy(logits, y, reduction="none"))

    def on_validation_epoch_end(self) -> None:
        nll = self.val_nll.compute()
        self.log_dict({"val/acc": self.val_acc.compute(), "val/ece": self.val_ece.compute(),
                       "val/nll": nll, "val/loss": nll}, prog_bar=True)
        for metric in (self.val_acc, self.val_ece, self.val_nll):
            metric.reset()
