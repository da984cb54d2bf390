"""PEFT-backed adapters: LoRA, DoRA, rsLoRA, PiSSA (one class, `LoRA`), AdaLoRA and MiSS.

Each wraps the model with `peft.get_peft_model`; the modules named in `train_also` (e.g. a freshly
initialised classifier `head`) train fully.

- LoRA (Hu et al., 2021): W x + (alpha / r) B A x, A ~ Kaiming, B = 0.
- rsLoRA (Kalajdzievski, 2023): same, scaled by alpha / sqrt(r) (`use_rslora`).
- DoRA (Liu et al., 2024): m * (W + s B A) / ||W + s B A||_col, magnitude m trains (`use_dora`).
- PiSSA (Meng et al., 2024): A, B from the top-r singular triplets of W, residual kept frozen
  (`init: pissa`; alpha defaults to r, so the principal part is reproduced exactly at scale 1).
- AdaLoRA (Zhang et al., 2023): W + P diag(lambda) Q, ranks pruned by sensitivity from `init_r`
  to a budget `target_r`; `after_step` runs `update_and_allocate(step)` while this step's
  gradients are present, and `loss_term` adds
  `orth_reg_weight * sum ||P^T P - I||_F + ||Q Q^T - I||_F` (PEFT adds it only to a model output
  with a `.loss`).
- MiSS (Kang & Yin, 2024): a shared shard matrix expanded over the weight (PEFT `MissConfig`).
"""

import peft
import torch
from peft.utils.other import set_additional_trainable_modules
from torch import nn

from lrlab.adapters.base import Adapter, check_rank, off_identity, targeted
from lrlab.errors import require

LORA_INITS = (True, False, "gaussian", "pissa", "olora", "orthogonal")


class PeftAdapter(Adapter):
    """An adapter built from a PEFT config; `export` merges it into the base weights."""

    def peft_config(self, model: nn.Module):
        raise NotImplementedError

    def adapt(self, model: nn.Module) -> nn.Module:
        return peft.get_peft_model(model, self.peft_config(model))

    def export(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()

    def export_adapter(self, model: nn.Module) -> nn.Module:
        return with_modules_to_save(model, self.train_also)


def with_modules_to_save(model: peft.PeftModel, train_also: list[str] | None) -> peft.PeftModel:
    """The PEFT model with the modules that trained fully (`train_also`) as PEFT's
    `modules_to_save`, holding their trained weights, so `save_pretrained` writes them and
    `PeftModel.from_pretrained` restores them onto the base model."""
    if train_also:
        config = model.peft_config[model.active_adapter]
        config.modules_to_save = sorted({*(config.modules_to_save or ()), *train_also})
        set_additional_trainable_modules(model.base_model, config, None, model.active_adapter)
    return model


class LoRA(PeftAdapter):
    def __init__(self, target_modules=None, r: int = 8, alpha: float | None = 16.0, dropout: float = 0.0,
                 train_also=None, init: str | bool = True, use_dora: bool = False, use_rslora: bool = False):
        super().__init__(target_modules, train_also)
        require(init in LORA_INITS, "adapter.init", init, f"one of {LORA_INITS}")
        self.r, self.alpha, self.dropout = r, (r if alpha is None else alpha), dropout
        self.init, self.use_dora, self.use_rslora = init, use_dora, use_rslora

    def peft_config(self, model: nn.Module) -> peft.LoraConfig:
        check_rank(targeted(model, self.target_modules, (nn.Linear, nn.Conv2d)), self.r)
        return peft.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                               target_modules=self.target_modules, init_lora_weights=self.init,
                               use_dora=self.use_dora, use_rslora=self.use_rslora)


class AdaLoRA(PeftAdapter):
    shardable = False  # FSDP2: PEFT's rank allocator masks whole parameters in place
    def __init__(self, total_steps: int, target_modules=None, init_r: int = 12, target_r: int = 8,
                 alpha: float = 32.0, dropout: float = 0.0, tinit: int = 0, tfinal: int = 0, delta_t: int = 1,
                 beta1: float = 0.85, beta2: float = 0.85, orth_reg_weight: float = 0.5, train_also=None):
        super().__init__(target_modules, train_also)
        require(total_steps > tinit + tfinal, "adapter.total_steps", total_steps, "> tinit + tfinal")
        self.settings = dict(init_r=init_r, target_r=target_r, lora_alpha=alpha, lora_dropout=dropout, tinit=tinit,
                             tfinal=tfinal, deltaT=delta_t, beta1=beta1, beta2=beta2,
                             orth_reg_weight=orth_reg_weight, total_step=total_steps)
        self.orth_reg_weight = orth_reg_weight

    def peft_config(self, model: nn.Module) -> peft.AdaLoraConfig:
        check_rank(targeted(model, self.target_modules), self.settings["init_r"], "adapter.init_r")
        return peft.AdaLoraConfig(target_modules=self.target_modules, **self.settings)

    def after_step(self, task, step: int) -> None:
        task.model.base_model.update_and_allocate(step)

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor:
        total = 0.0
        for name, param in task.model.named_parameters():
            if "lora_A" in name and param.requires_grad:
                total = total + off_identity(param @ param.T)
            elif "lora_B" in name and param.requires_grad:
                total = total + off_identity(param.T @ param)
        return self.orth_reg_weight * total


class MiSS(PeftAdapter):
    def __init__(self, target_modules=None, r: int = 8, dropout: float = 0.0, train_also=None):
        super().__init__(target_modules, train_also)
        self.r, self.dropout = r, dropout

    def peft_config(self, model: nn.Module) -> peft.MissConfig:
        check_rank(targeted(model, self.target_modules), self.r)
        return peft.MissConfig(r=self.r, miss_dropout=self.dropout, target_modules=self.target_modules)
