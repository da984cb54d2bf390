"""What every task shares: the model, its methods and loss (`lrlab.protocol`), the optimizer and
schedule from config, and the non-finite-loss guard.

The guard reads nothing back from the device in an ordinary step: each training step records, on
the device, the first step whose loss is not finite (`watch_loss`), and the host reads that
record (`check_losses`) only where the loop waits for the device anyway: at the steps whose
metrics the loggers read (every `trainer.log_every_n_steps`), before a validation, before a
checkpoint is written (`CheckpointGuard`) and at the end of training. A diverged run therefore
stops at most `log_every_n_steps` steps later, naming the first bad step and its loss, and no
checkpoint ever holds its state.

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
    """`config` is the run's resolved config (a plain dict): the task's hyperparameters, stored in
    every checkpoint, so that `Task.load_from_checkpoint(path)` rebuilds the model, its methods
    and loss from it (the parts are built from it when not given) and loads the weights."""

    def __init__(self, model: nn.Module | None = None, loss: Loss | None = None, methods: list[Method] = (),
                 optimizer: dict | None = None, scheduler: dict | None = None, total_steps: int = 1,
                 config: dict | None = None):
        super().__init__()
        self.num_classes_from_config = None
        self.save_hyperparameters({"config": config}, logger=False)
        if model is None:
            model, loss, methods, optimizer, scheduler, total_steps = self.parts_from(config)
        self.model = model
        self.loss = loss
        self.methods = nn.ModuleList(methods)
        self.optimizer_cfg, self.scheduler_cfg, self.total_steps = optimizer, scheduler, total_steps
        self.layerwise_hooks = []
        self.register_buffer("first_bad_step", torch.tensor(-1), persistent=False)
        self.register_buffer("first_bad_loss", torch.tensor(0.0, dtype=torch.float64), persistent=False)

    def parts_from(self, config: dict | None) -> tuple:
        from omegaconf import OmegaConf

        from lrlab.parts import task_parts

        if config is None:
            raise TypeError(f"{type(self).__name__} needs a model, or the config to build it from")
        parts = task_parts(OmegaConf.create(config))
        self.num_classes_from_config = parts.pop("num_classes", None)
        return tuple(parts[k] for k in ("model", "loss", "methods", "optimizer", "scheduler", "total_steps"))

    def hooked(self, hook: str) -> list[Method]:
        """The methods (and the loss) that implement `hook`."""
        return [m for m in (*self.methods, self.loss) if m.overrides(hook)]

    def configure_model(self) -> None:
        """FSDP2 (`trainer=fsdp2`): shard each decoder layer, then the whole model."""
        from lightning.pytorch.strategies import ModelParallelStrategy

        if self._trainer is None or not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return  # no trainer: `load_from_checkpoint` builds the whole model
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

    def watch_loss(self, loss: torch.Tensor) -> None:
        """Record this step and its loss on the device if the loss is the run's first non-finite one."""
        first = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(first, self.global_step, self.first_bad_step))
        self.first_bad_loss.copy_(torch.where(first, loss.detach().double(), self.first_bad_loss))

    def check_losses(self) -> None:
        """Raise `NonFiniteLossError` for the first non-finite loss recorded (one host read)."""
        step = int(self.first_bad_step)
        if step >= 0:
            raise NonFiniteLossError(step, float(self.first_bad_loss))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        every = self.trainer.log_every_n_steps
        if every and self.global_step % every == 0:
            self.check_losses()

    def on_validation_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.check_losses()

    def on_train_end(self) -> None:
        self.check_losses()

    def log_train_loss(self, name: str, loss: torch.Tensor) -> None:
        """A progress bar reads its metrics back every step: show the loss there only when a bar is shown."""
        self.log(name, loss.detach(), prog_bar=self.trainer.progress_bar_callback is not None)
