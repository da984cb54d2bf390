"""Layer-wise weight update (`optimizer.layerwise=true`): each weight is stepped inside the
backward pass, as soon as its gradient is complete, and that gradient is freed at once, so the
full set of gradients is never held (GaLore, Zhao et al. 2024, arXiv 2403.03507, Sec. 4.3; the
official `galore_adamw8bit_per_layer` path of torchrun_main.py, jiaweizzhao/GaLore, read at
1317b5f: one post-accumulate-grad hook per parameter).

The rule: a post-accumulate-grad hook on every trained weight W calls the run's one optimizer
while W alone has a gradient, then sets W.grad to None. torch's AdamW and `LowRankAdamW` (GaLore,
Fira, DCT, FRUGAL, momentum reset) step only the parameters that have a gradient and their
update of W reads only W's gradient and state, so the result is the normal step's. The step
Lightning calls after the backward pass then finds no gradient and changes nothing.

The hooks hold the optimizer weakly and are removed when it is freed. A strong reference would
close the cycle weight → hook → optimizer → weight, which the garbage collector cannot break
through torch's hook dicts: every model whose optimizer was ever built layer-wise (e.g. the one
`lrlab train` builds to check a run before Hydra starts it) would stay in memory for the life
of the process, one more copy of the weights at the peak.

Where lrlab differs from the official code: the official path builds one optimizer and one lr
scheduler per parameter, steps the scheduler inside the hook (hence its doubled step counts) and
saves no optimizer state. Here the optimizer, its state dict, the lr schedule and the
checkpoints stay the normal step's, so a layer-wise run resumes exactly and may switch the
option on or off at a resume.

What cannot combine with it, refused before anything runs (`check`): global gradient clipping
(the norm needs every gradient at once), gradient accumulation (a weight would be stepped at
every micro-batch), more than one process (the hook fires before data parallelism averages the
gradient), fp16 mixed precision (its gradient scaler unscales and skips after the backward
pass), a method that builds its own optimizer, a method that acts between the backward pass and
the step (`after_step` reads gradients or weights of the step), and a callback that reads
gradients (`on_after_backward`, `on_before_optimizer_step`).
"""

import weakref

import lightning as L
import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from lrlab.errors import require
from lrlab.optim.lowrank_adam import LowRankAdamW

STEPPED_PER_WEIGHT = (torch.optim.AdamW, LowRankAdamW)
GRADIENT_HOOKS = ("on_after_backward", "on_before_optimizer_step")
ALLOWED = "optimizer.layerwise=true needs"


def attach(optimizer: torch.optim.Optimizer) -> list:
    """Hook every parameter of `optimizer` so that it is stepped as soon as its gradient is
    complete; returns the handles (remove them to detach; they go when the optimizer is freed)."""
    require(isinstance(optimizer, STEPPED_PER_WEIGHT), "optimizer.layerwise", True,
            "supported by adamw and the low-rank family (galore, fira, dct, frugal, frugal_svd, lowrank_reset), "
            f"not {type(optimizer).__name__}")

    owner = weakref.ref(optimizer)

    def step_now(param: torch.Tensor) -> None:
        owner().step()
        param.grad = None

    handles = [p.register_post_accumulate_grad_hook(step_now)
               for group in optimizer.param_groups for p in group["params"]]
    weakref.finalize(optimizer, detach, handles)
    return handles


def detach(handles: list) -> None:
    for handle in handles:
        handle.remove()


def check(cfg: DictConfig, methods: list) -> None:
    """Refuse what cannot combine with `optimizer.layerwise=true` (see the module docstring)."""
    value = cfg.optimizer.get("layerwise", False)
    require(isinstance(value, bool), "optimizer.layerwise", value, "must be true or false")
    if not value:
        return
    trainer = cfg.trainer
    clip = trainer.get("gradient_clip_val")
    require(not clip, "trainer.gradient_clip_val", clip,
            f"{ALLOWED} null or 0: a global gradient norm needs every gradient at once")
    accumulate = trainer.get("accumulate_grad_batches", 1)
    require(accumulate == 1, "trainer.accumulate_grad_batches", accumulate,
            f"{ALLOWED} 1: each weight is stepped in every backward pass")
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes") or 1
    one_process = nodes == 1 and (devices == 1 or (devices == "auto" and trainer.get("accelerator") == "cpu"))
    require(one_process, "trainer.devices", devices,
            f"{ALLOWED} one process (devices=1, num_nodes=1): a weight is stepped before its gradient is averaged")
    precision = str(trainer.get("precision"))
    require(not precision.startswith("16"), "trainer.precision", precision,
            f"{ALLOWED} 32-true, bf16-mixed or bf16-true: fp16's gradient scaler acts after the backward pass")
    for method in methods:
        for hook, why in (("build_optimizer", "builds its own optimizer"),
                          ("after_step", "acts between the backward pass and the step")):
            require(not method.overrides(hook), method.config_key, method.name,
                    f"cannot run with optimizer.layerwise=true: it {why}")
    for name, node in (cfg.get("callbacks") or {}).items():
        callback = get_class(node._target_)
        for hook in GRADIENT_HOOKS:
            require(getattr(callback, hook) is getattr(L.Callback, hook, None), f"callbacks.{name}", node._target_,
                    f"cannot run with optimizer.layerwise=true: it reads gradients ({hook})")

