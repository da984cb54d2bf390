"""OmegaConf resolvers the configs use: `${mul:a,b}` (e.g. input width 2p from the modulus p) and
`${count_or:list,default}` (the length of a list, or the default when it is null: the number of
classes kept by `data.classes`)."""

from omegaconf import OmegaConf


def register() -> None:
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
    if not OmegaConf.has_resolver("count_or"):
        OmegaConf.register_new_resolver("count_or", lambda items, default: default if items is None else len(items))


register()
