"""PEFT-backed adapters: LoRA, DoRA, rsLoRA, PiSSA, AdaLoRA, MiSS.

Each function wraps the model with `peft.get_peft_model` and then lets the modules named in
`train_also` (e.g. a freshly initialised classifier `head`) train fully.

- LoRA (Hu et al., 2021): W x + (alpha / r) B A x, A ~ Kaiming, B = 0.
- rsLoRA (Kalajdzievski, 2023): same, scaled by alpha / sqrt(r).
- DoRA (Liu et al., 2024): m * (W + s B A) / ||W + s B A||_col, magnitude m trains.
- PiSSA (Meng et al., 2024): A, B from the top-r singular triplets of W, residual kept frozen.
- AdaLoRA (Zhang et al., 2023): W + P diag(lambda) Q, ranks pruned by sensitivity from `init_r`
  to a budget `target_r`; `model.lrlab_hooks` runs `update_and_allocate(step)` after each
  optimizer step and `model.lrlab_penalty` adds `orth_reg_weight * sum ||P^T P - I||_F + ||Q Q^T - I||_F`.
- MiSS (Kang & Yin, 2024): a shared shard matrix expanded over the weight (PEFT `MissConfig`).
"""

import peft
import torch
from torch import nn

from lrlab.adapters.base import train_fully
from lrlab.errors import require


def _lora_config(r, alpha, dropout, target_modules, **extra) -> peft.LoraConfig:
    require(r >= 1, "adapter.r", r, "an integer >= 1")
    require(bool(target_modules), "adapter.target_modules", target_modules, "a non-empty list of module names")
    return peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), **extra)


def lora(model: nn.Module, target_modules: list[str], r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
         train_also: tuple[str, ...] = (), init: str | bool = True, use_dora: bool = False,
         use_rslora: bool = False) -> nn.Module:
    """LoRA and its PEFT variants (`init=pissa` for PiSSA, `use_dora`, `use_rslora`)."""
    allowed_init = (True, False, "gaussian", "pissa", "olora", "orthogonal")
    require(init in allowed_init, "adapter.init", init, f"one of {allowed_init}")
    config = _lora_config(r, alpha, dropout, target_modules, init_lora_weights=init, use_dora=use_dora,
                          use_rslora=use_rslora)
    return train_fully(peft.get_peft_model(model, config), list(train_also))


def dora(model, target_modules, r=8, alpha=16.0, dropout=0.0, train_also=()):
    return lora(model, target_modules, r, alpha, dropout, train_also, use_dora=True)


def rslora(model, target_modules, r=8, alpha=16.0, dropout=0.0, train_also=()):
    return lora(model, target_modules, r, alpha, dropout, train_also, use_rslora=True)


def pissa(model, target_modules, r=8, alpha=None, dropout=0.0, train_also=()):
    """PiSSA: alpha defaults to r so the principal part is reproduced exactly at scale 1."""
    return lora(model, target_modules, r, r if alpha is None else alpha, dropout, train_also, init="pissa")


def adalora(model: nn.Module, target_modules: list[str], total_steps: int, init_r: int = 12, target_r: int = 8,
            alpha: float = 32.0, dropout: float = 0.0, tinit: int = 0, tfinal: int = 0, delta_t: int = 1,
            beta1: float = 0.85, beta2: float = 0.85, orth_reg_weight: float = 0.5,
            train_also: tuple[str, ...] = ()) -> nn.Module:
    require(total_steps > tinit + tfinal, "adapter.total_steps", total_steps, "> tinit + tfinal")
    config = peft.AdaLoraConfig(init_r=init_r, target_r=target_r, lora_alpha=alpha, lora_dropout=dropout,
                                target_modules=list(target_modules), tinit=tinit, tfinal=tfinal, deltaT=delta_t,
                                beta1=beta1, beta2=beta2, orth_reg_weight=orth_reg_weight,
                                total_step=total_steps)
    model = train_fully(peft.get_peft_model(model, config), list(train_also))
    tuner = model.base_model

    def allocate(task, step):
        # AdaLoRA's sensitivity needs the gradients of this step, so it runs before they are zeroed.
        tuner.update_and_allocate(step)

    def orthogonality(task, outputs, batch) -> torch.Tensor:
        total = 0.0
        for name, param in model.named_parameters():
            if ("lora_A" in name or "lora_B" in name) and param.requires_grad:
                gram = param @ param.T if "lora_A" in name else param.T @ param
                eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
                total = total + torch.linalg.norm(gram - eye, "fro")
        return orth_reg_weight * total

    model.lrlab_hooks = [allocate]
    model.lrlab_penalty = orthogonality
    return model


def miss(model: nn.Module, target_modules: list[str], r: int = 8, dropout: float = 0.0,
         train_also: tuple[str, ...] = ()) -> nn.Module:
    require(r >= 1, "adapter.r", r, "an integer >= 1")
    config = peft.MissConfig(r=r, miss_dropout=dropout, target_modules=list(target_modules))
    return train_fully(peft.get_peft_model(model, config), list(train_also))


def merge(model: nn.Module) -> nn.Module:
    """Fold the adapter into the base weights and return the plain model."""
    return model.merge_and_unload()
