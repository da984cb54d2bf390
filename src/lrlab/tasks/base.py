"""What every task shares: the model, the optimizer and schedule from config, stacked
regularizers, adapter hooks, and the non-finite-loss guard.

Per-sample regularizer state lives in `self.regularizers` buffers, so it is checkpointed with
the module. Nothing here is method-specific: methods plug in through their config groups.
"""

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn

from lrlab.optim import schedule


class NonFiniteLossError(RuntimeError):
    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"loss is {value} at step {step}")


class BaseTask(L.LightningModule):
    def __init__(self, model: nn.Module, optimizer: dict, scheduler: dict, total_steps: int,
                 regularizers: list | None = None):
        super().__init__()
        self.model = model
        self.optimizer_cfg, self.scheduler_cfg, self.total_steps = optimizer, scheduler, total_steps
        self.regularizers = nn.ModuleList(regularizers or [])

    def configure_model(self) -> None:
        """FSDP2 (`trainer=fsdp2`): shard each decoder layer, then the whole model."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for module in self.model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                fully_shard(module, mesh=mesh)
        fully_shard(self.model, mesh=mesh)

    # --- optimisation -------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = instantiate(self.optimizer_cfg, _partial_=True, _convert_="all")(self.model)
        scheduler = schedule.build(optimizer, self.total_steps, **self.scheduler_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        for hook in getattr(self.model, "lrlab_hooks", ()):
            hook(self, self.global_step)

    # --- regularisation -----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        for reg in self.regularizers:
            reg.setup(dm.num_train_samples, getattr(dm, "num_classes", 0))
        if stage == "fit":
            self.run_init_hooks(dm)

    def run_init_hooks(self, datamodule) -> None:
        """Data-driven adapter initialisation (`model.lrlab_init_hooks`, e.g. EVA), before the
        optimizer is built, on the device training will use."""
        hooks = getattr(self.model, "lrlab_init_hooks", ())
        if not hooks:
            return
        self.model.to(self.trainer.strategy.root_device)
        for hook in hooks:
            hook(self, datamodule.train_dataloader())

    def regularized_loss(self, outputs: dict, batch: dict) -> torch.Tensor:
        loss = outputs["loss"]
        for reg in self.regularizers:
            value = reg(outputs, batch, self)
            if reg.replaces_loss:
                loss = value
            else:
                loss = loss + reg.weight * value
                self.log(f"train/reg_{type(reg).__name__.lower()}", value.detach(), on_step=True, on_epoch=False)
        penalty = getattr(self.model, "lrlab_penalty", None)
        if penalty is not None:
            loss = loss + penalty(self, outputs, batch)
        return loss

    def feature_hook(self):
        """Lets regularizers transform a classifier's penultimate features (identity by default)."""
        if len(self.regularizers) == 0:
            return None

        def hook(features):
            for reg in self.regularizers:
                features = reg.transform_features(features, self.training)
            return features

        return hook

    def on_train_epoch_end(self) -> None:
        for reg in self.regularizers:
            reg.on_train_epoch_end(self)

    def check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(self.global_step, float(loss))
