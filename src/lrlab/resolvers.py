"""OmegaConf resolvers the configs use: `${mul:a,b}` (e.g. input width 2p from the modulus p),
`${count_or:list,default}` (the length of a list, or the default when it is null: the number of
classes kept by `data.classes`) and `${on_gpu:accelerator,gpu_value,cpu_value}` (the first value
when the trainer's accelerator is a GPU: `gpu`/`cuda`, or `auto` on a machine with CUDA; e.g. the
multi-device trainers' precision, bf16-mixed on GPUs and 32-true on CPUs)."""

from omegaconf import OmegaConf


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
    if not OmegaConf.has_resolver("on_gpu"):
        OmegaConf.register_new_resolver("on_gpu", on_gpu)


register()
