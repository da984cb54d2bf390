"""Causal language modelling: next-token cross-entropy, perplexity, tokens/s."""

import math

import torch
from torchmetrics import MeanMetric

from lrlab.tasks.base import BaseTask


class CausalLMTask(BaseTask):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_loss = MeanMetric()

    def forward_batch(self, batch: dict) -> dict:
        out = self.model(input_ids=batch["input_ids"], labels=batch["labels"])
        return {"logits": out.logits, "loss": out.loss}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.forward_batch(batch)
        loss = self.regularized_loss(outputs, batch)
        self.check_finite(loss)
        self.log("train/loss", outputs["loss"].detach(), prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        outputs = self.forward_batch(batch)
        self.val_loss.update(outputs["loss"], weight=batch["input_ids"].numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.tensor(math.exp(min(float(loss), 50.0))))
