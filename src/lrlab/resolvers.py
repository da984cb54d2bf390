"""OmegaConf resolvers the configs use: `${mul:a,b}` (e.g. input width 2p from the modulus p)."""

from omegaconf import OmegaConf


def register() -> None:
    if not OmegaConf.has_resolver("mul"):
        OmegaConf.register_new_resolver("mul", lambda a, b: a * b)


register()
