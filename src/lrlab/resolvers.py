"""OmegaConf resolvers the configs use: `${mul:a,b}` (e.g. input width 2p from the modulus p),
`${count_or:list,default}` (the length of a list, or the default when it is null: the number of
classes kept by `data.classes`), `${stamp:FORMAT}` (the default `run_name`: the time, fixed
once per command in `LRLAB_RUN_STAMP`, so that the pre-check, Hydra and every DDP rank agree
where the run goes; Hydra's `${now:}` differs between processes) and
`${on_gpu:accelerator,gpu_value,cpu_value}` (the first value when the trainer's accelerator is a
GPU: `gpu`/`cuda`, or `auto` on a machine with CUDA; e.g. the multi-device trainers' precision,
bf16-mixed on GPUs and 32-true on CPUs)."""

import os
from datetime import datetime

from omegaconf import OmegaConf

STAMP_VARIABLE = "LRLAB_RUN_STAMP"


def freeze_stamp() -> None:
    """Fix the time that `${stamp:...}` gives for this command (and the processes it starts)."""
    os.environ[STAMP_VARIABLE] = datetime.now().isoformat(timespec="seconds")


def stamp(pattern: str) -> str:
    frozen = os.environ.get(STAMP_VARIABLE)
    return (datetime.fromisoformat(frozen) if frozen else datetime.now()).strftime(pattern)


def on_gpu(accelerator: str, gpu_value, cpu_value):
    if accelerator in ("gpu", "cuda"):
        return gpu_value
    if accelerator == "auto":
        import torch

        return gpu_value if torch.cuda.is_available() else cpu_value
    return cpu_value


def register() -> None:
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
    if not OmegaConf.has_resolver("count_or"):
        OmegaConf.register_new_resolver("count_or", lambda items, default: default if items is None else len(items))
    if not OmegaConf.has_resolver("stamp"):
        OmegaConf.register_new_resolver("stamp", stamp)
    if not OmegaConf.has_resolver("on_gpu"):
        OmegaConf.register_new_resolver("on_gpu", on_gpu)


register()
