"""Type and range checks for the keys every run reads, so bad values fail with one line."""

from numbers import Number

from omegaconf import DictConfig

from lrlab.errors import ConfigError


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, Number) and not isinstance(v, bool)


CHECKS = [
    # key, predicate, what is allowed
    ("seed", _is_int, "an integer"),
    ("trainer.max_steps", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("trainer.val_check_interval", lambda v: (_is_int(v) and v > 0) or (_is_num(v) and 0 < v <= 1),
     "a positive integer (steps) or a fraction in (0, 1]"),
    ("trainer.accumulate_grad_batches", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("trainer.gradient_clip_val", lambda v: v is None or (_is_num(v) and v >= 0), "null or a number >= 0"),
    ("trainer.devices", lambda v: v == "auto" or (_is_int(v) and v >= 1), "auto or an integer >= 1"),
    ("optimizer.lr", lambda v: _is_num(v) and v > 0, "a number > 0"),
    ("optimizer.weight_decay", lambda v: _is_num(v) and v >= 0, "a number >= 0"),
    ("data.batch_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("data.seq_len", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("scheduler.warmup_ratio", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("scheduler.min_lr_ratio", lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
]

MISSING = object()


def lookup(cfg: DictConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return MISSING
        node = node[part]
    return node


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first key whose value is of the wrong type or out of range."""
    for key, ok, allowed in CHECKS:
        value = lookup(cfg, key)
        if value is not MISSING and not ok(value):
            raise ConfigError(key, value, f"must be {allowed}")
