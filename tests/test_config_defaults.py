"""The Python defaults of every method builder are those of its config group's file: a method
built from code (`lowrank_adam.build(model)`) is the one `optimizer=galore` builds. Generated from
the config files: every setting of a `_target_` file that the target's signature also defaults."""

import inspect
from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

from lrlab import conf_dir

GROUPS = ("optimizer", "regularizer", "adapter", "loss", "parametrization")


def defaulted_settings() -> list[tuple[str, str, object, object]]:
    """(config file, key, its value, the code's default) for every key both give a value."""
    rows = []
    for group in GROUPS:
        for path in sorted((conf_dir() / group).glob("*.yaml")):
            node = yaml.safe_load(path.read_text()) or {}
            if "_target_" not in node:  # regularizers sit under their name (`regularizer.elr.beta`)
                node = next((v for v in node.values() if isinstance(v, dict) and "_target_" in v), {})
            if "_target_" not in node:
                continue
            parameters = inspect.signature(get_object(node["_target_"])).parameters
            for key, value in node.items():
                default = parameters[key].default if key in parameters else inspect.Parameter.empty
                if default is not inspect.Parameter.empty and not (isinstance(value, str) and "${" in value):
                    rows.append((f"{group}/{path.stem}", key, value, default))
    return rows


SETTINGS = defaulted_settings()


def test_every_method_group_is_covered():
    assert {name.split("/")[0] for name, *_ in SETTINGS} == set(GROUPS)


@pytest.mark.parametrize("config, key, value, default", SETTINGS, ids=[f"{c}.{k}" for c, k, *_ in SETTINGS])
def test_code_default_is_the_config_value(config, key, value, default):
    assert (list(default) if isinstance(default, tuple) else default) == value
