"""Classification: cross-entropy; validation accuracy, ECE (15 bins) and NLL; samples/s."""

import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCalibrationError

from lrlab.tasks.base import BaseTask


class ClassifyTask(BaseTask):
    def __init__(self, *args, num_classes: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_ece = MulticlassCalibrationError(num_classes, n_bins=15, norm="l1")
        self.val_nll = MeanMetric()

    def forward_batch(self, batch: dict) -> dict:
        out = self.model(batch["x"], feature_hook=self.feature_hook())
        return {**out, "loss": F.cross_entropy(out["logits"], batch["y"])}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.forward_batch(batch)
        loss = self.regularized_loss(outputs, batch)
        self.check_finite(loss)
        self.log("train/loss", loss.detach(), prog_bar=True)
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
