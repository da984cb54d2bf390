"""What every task shares: the model, its methods and loss (`lrlab.protocol`), the optimizer and
schedule from config, and the non-finite-loss guard.

The methods and the loss are submodules, so their state (per-sample targets, masks) is
checkpointed with the task. Nothing here is method-specific: the task calls the protocol's hooks.
"""

import lightning as L
import torch
from torch import nn

from lrlab.instantiate import build_optimizer
from lrlab.optim import layerwise, schedule
from lrlab.protocol import Loss, Method


class NonFiniteLossError(RuntimeError):
    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"loss is {value} at step {step}")


class BaseTask(L.LightningModule):
    def __init__(self, model: nn.Module, loss: Loss, methods: list[Method], optimizer: dict, scheduler: dict,
                 total_steps: int):
        super().__init__()
        self.model = model
        self.loss = loss
        self.methods = nn.ModuleList(methods)
        self.optimizer_cfg, self.scheduler_cfg, self.total_steps = optimizer, scheduler, total_steps
        self.layerwise_hooks = []

    def hooked(self, hook: str) -> list[Method]:
        """The methods (and the loss) that implement `hook`."""
        return [m for m in (*self.methods, self.loss) if m.overrides(hook)]

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
        settings = dict(self.optimizer_cfg)
        per_weight = settings.pop("layerwise", False)
        optimizer = build_optimizer(self.model, list(self.methods), settings)
        layerwise.detach(self.layerwise_hooks)  # the optimizer built by an earlier call steps nothing
        self.layerwise_hooks = layerwise.attach(optimizer) if per_weight else []
        scheduler = schedule.build(optimizer, self.total_steps, **self.scheduler_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        for method in self.hooked("after_step"):
            method.after_step(self, self.global_step)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        scheduler.step()
        scale = 1.0
        for method in self.hooked("lr_scale"):
            scale *= method.lr_scale(self.global_step)
        if scale != 1.0:
            for group in scheduler.optimizer.param_groups:
                group["lr"] *= scale

    def trainable_params(self) -> int:
        """Entries that train: every `requires_grad` parameter in full, except where a method says
        only some of its entries train."""
        partial = {}
        for method in self.hooked("trained_entries"):
            partial.update(method.trained_entries(self.model))
        return int(sum(partial.get(name, p.numel()) for name, p in self.model.named_parameters() if p.requires_grad))

    # --- data-bound state and initialisation ----------------------------------------------
    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        for method in (*self.methods, self.loss):
            method.bind_data(dm.num_train_samples, getattr(dm, "num_classes", 0))
        if stage == "fit":
            self.init_from_data(dm)

    def init_from_data(self, datamodule) -> None:
        """Data-driven initialisation (e.g. EVA), before the optimizer is built, on the device
        training will use."""
        methods = self.hooked("init_from_data")
        if not methods:
            return
        self.model.to(self.trainer.strategy.root_device)
        for method in methods:
            method.init_from_data(self, datamodule.train_dataloader())

    def on_train_epoch_end(self) -> None:
        for method in self.hooked("on_train_epoch_end"):
            method.on_train_epoch_end(self)

    # --- the loss -----------------------------------------------------------------------
    def training_loss(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss group's value, that plus every method's term)."""
        weights = None
        for method in self.hooked("sample_weights"):
            w = method.sample_weights(self, outputs, batch)
            if w is not None:
                weights = w if weights is None else weights * w
        base = self.loss(outputs, batch, self, weights)
        total = base
        for method in self.hooked("loss_term"):
            term = method.loss_term(self, outputs, batch)
            if term is not None:
                total = total + term
                self.log(f"train/term_{method.name}", term.detach(), on_step=True, on_epoch=False)
        return base, total

    def check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(self.global_step, float(loss))
