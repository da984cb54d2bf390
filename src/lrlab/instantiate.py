"""The one instantiate path: config node → object, every failure one `ConfigError` line naming the
key. `build_optimizer` makes the optimizer from the `optimizer` group, or from the one method
that owns it (`lrlab.protocol.Method.build_optimizer`).
"""

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lrlab.errors import ConfigError, require
from lrlab.protocol import Method

NOT_ARGUMENTS = ("task", "info")


def instantiate_node(node, key: str, **kwargs):
    """`hydra.utils.instantiate` of a config node (DictConfig or dict); any failure is a ConfigError
    naming `key`."""
    plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    plain = {k: v for k, v in plain.items() if k not in NOT_ARGUMENTS}
    try:
        return instantiate(plain, _convert_="all", **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        reason = str(cause or err).strip().splitlines()[0] if str(cause or err).strip() else type(cause).__name__
        raise ConfigError(key, plain.get("_target_"), f"cannot be built: {reason}") from None


def build_optimizer(model, methods: list[Method], optimizer: dict):
    """The optimizer: the owning method's, else the `optimizer` group's `build(model, **hyperparameters)`."""
    owned = [built for built in (m.build_optimizer(model, optimizer) for m in methods) if built is not None]
    require(len(owned) <= 1, "adapter", [m.name for m in methods], "at most one method may supply the optimizer")
    if owned:
        return owned[0]
    return instantiate_node(optimizer, "optimizer", model=model)
