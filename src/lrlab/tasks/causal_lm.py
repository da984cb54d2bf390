"""Causal language modelling: next-token loss from the `loss` group (cross-entropy by default),
perplexity, tokens/s."""

import math

import torch
from torchmetrics import MeanMetric

from lrlab.losses.cross_entropy import causal_lm_cross_entropy
from lrlab.tasks.base import BaseTask


class CausalLMTask(BaseTask):
    kind = "causal_lm"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_loss = MeanMetric()

    def forward_batch(self, batch: dict) -> dict:
        return {"logits": self.model(input_ids=batch["input_ids"]).logits}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.forward_batch(batch)
        lm_loss, loss = self.training_loss(outputs, batch)
        self.watch_loss(loss)
        self.log_train_loss("train/loss", lm_loss)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = causal_lm_cross_entropy(self.forward_batch(batch)["logits"], batch["labels"])
        self.val_loss.update(loss, weight=batch["input_ids"].numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.tensor(math.exp(min(float(loss), 50.0))))
