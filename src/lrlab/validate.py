"""`lrlab validate`: compose and instantiate every experiment preset without training.

Large config-only LLaMA models are built on the meta device, so validating a 7B preset costs
no memory; every other part is built for real (data modules are constructed, not loaded).
"""

import sys
from contextlib import nullcontext

import torch

from lrlab import conf_dir
from lrlab.errors import ConfigError

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

    from lrlab.build import build_parts
    from lrlab.train import check_optimizer, compose
    from lrlab.validation import check_config

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
