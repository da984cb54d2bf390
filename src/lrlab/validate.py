"""Checks of the keys every run reads, so that bad values fail with one line before anything runs.

`check_structure`: every config group is present (`~optimizer` deletes one) and every value
resolves (no `???` left, no broken `${...}`). `check_config`: types and ranges of the keys a
run reads, where they are present.

`lrlab validate` (`validate_presets`): compose and instantiate every experiment preset without training.

Large config-only LLaMA models are built on the meta device, so validating a 7B preset costs
no memory; every other part is built for real (data modules are constructed, not loaded).
"""

import math
import re
import sys
from contextlib import nullcontext
from numbers import Number
from typing import get_args

import torch
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lrlab import conf_dir
from lrlab.errors import ConfigError

REQUIRED = ("model", "data", "optimizer", "scheduler", "regularizer", "adapter", "trainer", "logger",
            "callbacks", "paths", "seed", "run_name", "resume", "ckpt_path", "deterministic")
TURNED_OFF_BY = {"logger": "logger=none", "callbacks": "callbacks=none", "regularizer": "regularizer=none",
                 "adapter": "adapter=none"}
PRECISIONS = tuple(dict.fromkeys(str(p) for group in get_args(_PRECISION_INPUT) for p in get_args(group)))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, Number) and not isinstance(v, bool) and math.isfinite(v)


def _positive_ints(v) -> bool:
    return isinstance(v, (list, tuple, ListConfig)) and len(v) > 0 and all(_is_int(x) and x > 0 for x in v)


def _betas(v) -> bool:
    return isinstance(v, (list, tuple, ListConfig)) and len(v) == 2 and all(_is_num(b) and 0 <= b < 1 for b in v)


CHECKS = [
    # key, predicate, what is allowed
    ("seed", _is_int, "an integer"),
    ("threads", lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"),
    ("objective.metric", lambda v: isinstance(v, str) and v.startswith("val/"),
     "a validation metric of summary.json, e.g. val/loss or val/acc"),
    ("objective.mode", lambda v: v in ("min", "max"), "min or max"),
    ("objective.on_failure", lambda v: v in ("worst", "raise"), "worst or raise"),
    ("deterministic", lambda v: v in (True, False, "warn", "strict"), "true, false, warn or strict"),
    ("trainer.max_steps", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("trainer.val_check_interval", lambda v: (_is_int(v) and v > 0) or (_is_num(v) and 0 < v <= 1),
     "a positive integer (steps) or a fraction in (0, 1]"),
    ("trainer.accumulate_grad_batches", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    ("trainer.gradient_clip_val", lambda v: v is None or (_is_num(v) and v >= 0), "null or a number >= 0"),
    ("trainer.devices", lambda v: v == "auto" or (_is_int(v) and v >= 1), "auto or an integer >= 1"),
    ("trainer.precision", lambda v: str(v) in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    ("optimizer.lr", lambda v: _is_num(v) and v > 0, "a finite number > 0"),
    ("optimizer.weight_decay", lambda v: _is_num(v) and v >= 0, "a finite number >= 0"),
    ("optimizer.eps", lambda v: _is_num(v) and v >= 0, "a finite number >= 0"),
    ("optimizer.betas", _betas, "two numbers in [0, 1), e.g. [0.9,0.999]"),
    ("optimizer.momentum", lambda v: _is_num(v) and v >= 0, "a finite number >= 0"),
    ("data.batch_size", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("data.seq_len", lambda v: _is_int(v) and v > 0, "a positive integer"),
    ("data.num_workers", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    ("model.hidden", _positive_ints, "a non-empty list of positive integers"),
    ("model.channels", _positive_ints, "a non-empty list of positive integers"),
    ("model.dropout", lambda v: _is_num(v) and 0 <= v < 1, "a number in [0, 1)"),
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


def _built(cfg: DictConfig):
    """(key, node) of every config node that a run instantiates."""
    for key in ("model", "data", "optimizer"):
        yield key, cfg[key]
    for group in ("regularizer", "callbacks", "logger"):
        for name, node in (cfg[group] or {}).items():
            yield f"{group}.{name}", node
    if cfg.adapter:
        yield "adapter", cfg.adapter


def check_structure(cfg: DictConfig) -> None:
    """Raise ConfigError for a deleted group or key, a group left with settings but nothing to
    build (`~callbacks` under a preset that sets one of its keys), a `???` left unset, or a
    `${...}` that does not resolve."""
    for key in REQUIRED:
        if key not in cfg:
            off = f"; {TURNED_OFF_BY[key]} turns it off" if key in TURNED_OFF_BY else ""
            raise ConfigError(key, None, f"is required (`~{key}` deleted it){off}")
    for key, node in _built(cfg):
        if not isinstance(node, DictConfig) or "_target_" not in node:
            group = key.split(".")[0]
            raise ConfigError(key, None, f"has settings but nothing to build (no _target_): pick one of "
                              f"`lrlab ls {group}` instead of deleting the group")
    model_task, data_task = cfg.model.get("task"), cfg.data.get("task")
    if model_task != data_task:  # before resolving: the model's sizes point into a data config of another kind
        raise ConfigError("model", cfg.model.get("_target_"), f"is a {model_task} model but data is {data_task}: "
                          "choose a matching model/data pair")
    unset = next(_unset(cfg), None)
    if unset is not None:
        raise ConfigError(unset, "???", f"is required: set it, e.g. {unset}=VALUE")
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        named = re.search(r"Missing mandatory value: ([\w.]+)", str(err))
        if named:
            raise ConfigError(named.group(1), "???", f"is required: set it, e.g. {named.group(1)}=VALUE") from None
        reason = str(err).strip().splitlines()[0]
        raise ConfigError(err.full_key or "config", _raw(cfg, err.full_key), f"cannot be resolved: {reason}") from None


def _raw(cfg: DictConfig, dotted: str | None):
    """The value as written (an interpolation stays `${...}`)."""
    if not dotted or "." not in dotted:
        return None
    parent, _, leaf = dotted.rpartition(".")
    node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False)
    return node._get_node(leaf)._value() if isinstance(node, DictConfig) and leaf in node else None


def _unset(node, prefix: str = ""):
    """Dotted keys whose value is a literal `???`, in config order."""
    for key in node:
        if OmegaConf.is_missing(node, key):
            yield f"{prefix}{key}"
        else:
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_interpolation():
                yield from _unset(child, f"{prefix}{key}.")


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError for the first key whose value is of the wrong type or out of range."""
    for key, ok, allowed in CHECKS:
        value = lookup(cfg, key)
        if value is not MISSING and not ok(value):
            raise ConfigError(key, value, f"must be {allowed}")


# --- every preset -------------------------------------------------------------------------
META_MIN_HIDDEN = 512


def presets(source=None, overrides: list[str] = ()) -> list[str]:
    """The experiment presets: lrlab's, or every one on `source`'s search path (a user's config
    dir given by -cd or `hydra.searchpath`) when it is given."""
    roots = [conf_dir()] if source is None else source.config_dirs(list(overrides))
    found = set()
    for root in roots:
        found |= {str(p.relative_to(root / "experiment").with_suffix("")) for p in (root / "experiment").rglob("*.yaml")}
    return sorted(found)


def _device(cfg):
    big = cfg.model.get("_target_") == "lrlab.models.llama.build" and cfg.model.hidden_size >= META_MIN_HIDDEN
    return torch.device("meta") if big else nullcontext()


def check(preset: str, overrides: list[str], source=None) -> str | None:
    """None when the preset builds; otherwise one line saying why not."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lrlab.build import build_parts, check_optimizer, compose

    try:
        cfg = compose([f"experiment={preset}", *overrides], run_dir="/nonexistent", source=source)
        check_config(cfg)
        with _device(cfg):
            _, task = build_parts(cfg)
            check_optimizer(task)
    except (ConfigError, HydraException, OmegaConfBaseException) as err:
        return str(err).strip().splitlines()[0]
    except Exception as err:  # a broken preset may fail anywhere; report it, keep going
        return f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return None


def validate_presets(names: list[str] | None = None, overrides: list[str] | None = None, source=None) -> list[str]:
    broken = []
    names = names or presets(source, overrides or [])
    for name in names:
        reason = check(name, overrides or [], source)
        print(f"{'ok    ' if reason is None else 'BROKEN'} {name}" + (f": {reason}" if reason else ""))
        if reason is not None:
            broken.append(name)
    print(f"{len(broken)} broken of {len(names)} presets", file=sys.stderr if broken else sys.stdout)
    return broken
