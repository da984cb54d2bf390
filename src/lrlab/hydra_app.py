"""`lrlab train` as a Hydra app: Hydra's own flags, and the config they choose.

`lrlab train ARGS` reads ARGS with Hydra's own argument parser, so every Hydra flag works as on
any Hydra app (`--cfg`, `--resolve`, `--info`, `--help`, `--hydra-help`, `-cn`, `-cp`, `-cd`,
`-m`, `-sc`). `Source` is where those flags point (config path, config name, extra config dir):
the pre-check, `lrlab show|ls|validate|sweep` and the runner compose through the same search
path that Hydra builds for the app, so they check exactly what Hydra will run.
"""

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from lrlab import conf_dir
from lrlab.errors import ConfigError

ENTRY_MODULE = "lrlab.train"  # the module whose `hydra.main` runs the jobs
CONFIG_NAME = "train"


def hydra_parser() -> argparse.ArgumentParser:
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


def runs_jobs(args: argparse.Namespace) -> bool:
    """True when Hydra would run the app (not print help, a config, info or a completion)."""
    return not (args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
                or args.experimental_rerun)


@dataclass(frozen=True)
class Source:
    """The config a command composes: `config_path` (-cp) and `config_name` (-cn) of the primary
    config, and `config_dir` (-cd), an extra dir searched first."""
    config_path: str | None = None
    config_name: str = CONFIG_NAME
    config_dir: str | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Source":
        return cls(args.config_path, args.config_name or CONFIG_NAME, args.config_dir)

    def search_path(self):
        """Hydra's search path for the app, built as `hydra.main` builds it."""
        from hydra._internal.utils import create_automatic_config_search_path
        from hydra.core.config_search_path import SearchPathQuery

        search_path = create_automatic_config_search_path(None, ENTRY_MODULE, self.config_path or str(conf_dir()))
        if self.config_dir is not None:
            extra = os.path.abspath(self.config_dir)
            if not os.path.isdir(extra):
                raise ConfigError("--config-dir", self.config_dir, "must be an existing folder of configs")
            search_path.prepend("command-line", f"file://{extra}", anchor=SearchPathQuery(provider="schema"))
        return search_path

    @contextmanager
    def hydra(self) -> Iterator:
        """Hydra's app object for this source (the global one is restored afterwards)."""
        from hydra._internal.hydra import Hydra
        from hydra.core.global_hydra import GlobalHydra

        previous = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
        try:
            yield Hydra.create_main_hydra2(task_name="train", config_search_path=self.search_path())
        finally:
            GlobalHydra.instance().clear()
            if previous is not None:
                GlobalHydra.instance().initialize(previous)

    def compose(self, overrides: list[str], hydra_node: bool = False, multirun: bool = False) -> DictConfig:
        """The composed config; with `multirun`, sweep overrides are left out (the base config)."""
        from hydra.types import RunMode

        with self.hydra() as app:
            cfg = app.compose_config(self.config_name, list(overrides), RunMode.MULTIRUN if multirun else RunMode.RUN,
                                     from_shell=False, with_log_configuration=False)
        if not hydra_node:
            with open_dict(cfg):
                del cfg["hydra"]
        return cfg

    def multirun(self, overrides: list[str], flag: bool) -> bool:
        """Whether Hydra runs these overrides as a multirun (`-m`, or `hydra.mode=MULTIRUN` in the config)."""
        from hydra.types import RunMode

        if flag:
            return True
        with self.hydra() as app:
            return app.get_mode(self.config_name, list(overrides)) == RunMode.MULTIRUN

    def config_dirs(self, overrides: list[str] = ()) -> list[Path]:
        """The folders of configs on the search path, in order: -cd, the primary config dir, and
        every `hydra.searchpath` entry (the config's and the overrides')."""
        dirs = [*([Path(self.config_dir).resolve()] if self.config_dir else []),
                Path(self.config_path).resolve() if self.config_path else conf_dir()]
        searched = OmegaConf.select(self.compose(list(overrides), hydra_node=True, multirun=True), "hydra.searchpath")
        for entry in searched or []:
            found = _folder(str(entry))
            if found is not None:
                dirs.append(found)
        return list(dict.fromkeys(dirs))


def _folder(entry: str) -> Path | None:
    """The folder of a search-path entry (`file://DIR`, `pkg://package.path`, or a plain path)."""
    if entry.startswith("pkg://"):
        import importlib.util

        spec = importlib.util.find_spec(entry[len("pkg://"):].replace("/", "."))
        return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None
    path = Path(entry[len("file://"):] if entry.startswith("file://") else entry)
    return path.resolve() if path.is_dir() else None
