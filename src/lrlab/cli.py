"""`lrlab train|ls|show|validate|data|report|compress|estimate` — a thin dispatch over Hydra.

Every command composes the same `conf/train.yaml`. Bad input (unknown option, wrong type,
missing data, unreadable checkpoint, ...) prints one line `error: KEY=VALUE: what is allowed`
and exits with code 2; set HYDRA_FULL_ERROR=1 for the traceback.
"""

import argparse
import os
import re
import shutil
import sys
from datetime import datetime
from pathlib import Path

from lrlab import conf_dir, estimate
from lrlab.console import quiet_libraries
from lrlab.errors import ConfigError
from lrlab.rundir import first_missing

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


def check_overrides(overrides: list[str]) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for parsed, text in zip(OverridesParser.create().parse_overrides(overrides), overrides):
        if not parsed.key_or_group:
            raise ConfigError("override", text, "must be KEY=VALUE, e.g. optimizer.lr=3e-3")


def job_dir(job: list[str], multirun: bool, num: int) -> tuple[Path, str]:
    """Where Hydra will put this job, and the key that chose the place (for messages)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    fixed = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        node = compose("train", overrides=[*job, *([f"hydra.job.num={num}"] if multirun else [])],
                       return_hydra_config=True).hydra
    place = Path(str(OmegaConf.select(node, "sweep.dir" if multirun else "run.dir")))
    if multirun:
        place = place / str(OmegaConf.select(node, "sweep.subdir"))
    return Path(os.path.abspath(place)), fixed if _value(job, fixed) is not None else "run_name"


def precheck(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Make every check of every job before Hydra creates anything: a grid with one bad value
    fails in seconds, not after hours, and a refused input leaves the file system as it was.
    Returns the jobs."""
    from lrlab.train import compose, prepare

    check_overrides(overrides)
    jobs = _expand_sweep(overrides) if multirun else [overrides]
    for num, job in enumerate(jobs):
        try:
            place, chosen_by = job_dir(job, multirun, num)
            prepare(compose(job, run_dir=str(place)), place, chosen_by)
        except ConfigError as err:
            if len(jobs) == 1:
                raise
            raise ConfigError(err.key, err.value, f"{err.allowed} (job {num} of the grid; no job was started)") from None
    return jobs


def _differing(job: list[str], jobs: list[list[str]]) -> list[str]:
    return [item for item in job if not all(item in other for other in jobs)]


def grid_summary(jobs: list[list[str]], failed: list[tuple[int, str]]) -> str:
    parts = []
    for num, reason in failed:
        label = " ".join(_differing(jobs[num], jobs)) if num < len(jobs) else ""
        parts.append(f"job {num} ({label + ': ' if label else ''}{reason.split(';')[0]})")
    return f"{len(jobs) - len(failed)} of {len(jobs)} jobs completed; failed: {', '.join(parts)}"


def remove_if_empty(created: Path | None) -> None:
    """Folders that Hydra made for a run refused after it started, when nothing was written in them."""
    if created is not None and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
        shutil.rmtree(created, ignore_errors=True)


def cmd_train(args) -> None:
    overrides = list(args.overrides)
    if _value(overrides, "run_name") is None:
        overrides.append(f"run_name={datetime.now():%Y-%m-%d_%H-%M-%S}")
    jobs = guarded(precheck, overrides, args.multirun)
    top = job_dir(overrides if not args.multirun else jobs[0], args.multirun, 0)[0]
    created = first_missing(top.parent if args.multirun else top)
    import importlib.util

    import __main__
    from lrlab import train_entry

    # Lightning's `ddp` launcher re-runs `python -m <__main__'s module> <argv[1:]>` for each rank:
    # point it at the Hydra entry, which takes the overrides directly.
    __main__.__spec__ = importlib.util.find_spec("lrlab.train_entry")
    sys.argv = ["lrlab", *(["--multirun"] if args.multirun else []), *overrides]
    train_entry.FAILED.clear()
    try:
        train_entry.hydra_main()
    except SystemExit as done:
        if done.code == EXIT_BAD_INPUT:
            remove_if_empty(created)
        raise
    if args.multirun and train_entry.FAILED:
        print(grid_summary(jobs, train_entry.FAILED), file=sys.stderr)
        sys.exit(1)


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


def cmd_smoke(args) -> None:
    import tempfile
    import time

    from lrlab import smoke
    from lrlab.validate import presets

    chosen = guarded(smoke.select, list(args.patterns), presets())
    print(f"smoke: {len(chosen)} presets in miniature, {args.jobs or os.cpu_count()} at a time")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="lrlab-smoke-") as scratch:
        out = Path(args.out) if args.out else Path(scratch)
        results = smoke.run_all(chosen, out, steps=args.steps, jobs=args.jobs, report=lambda line: print(line, flush=True))
    seconds = time.perf_counter() - started
    failed = [r for r in results if not r.ok]
    if args.junit_xml:
        Path(args.junit_xml).write_text(smoke.junit_xml(results, seconds))
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed in {seconds:.0f} s")
    sys.exit(1 if failed else 0)


# --- data --------------------------------------------------------------------------------
def cmd_data(args) -> None:
    from lrlab.data import fetch

    if args.action == "ls":
        print(f"cache: {fetch.cache_root() / 'data'}")
        print(f"  {'name':<16}{'present':<9}{'source':<56}description")
        for name, src in sorted(fetch.SOURCES.items()):
            present = "yes" if fetch.is_present(name) else "no"
            print(f"  {name:<16}{present:<9}{src.kind + ':' + src.package + '==' + src.version:<56}{src.description}")
        print("  (digits, modular_arithmetic and stdlib_bytes need no fetch)")
        return
    if args.action == "prepare":
        from lrlab.data.prepare import command

        return guarded(command, list(args.name))
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
    smoke = sub.add_parser("smoke", help="run every preset (or those matching PATTERNs) in miniature on the CPU")
    smoke.add_argument("patterns", nargs="*", help="preset names or shell patterns, e.g. 'galore/*' or lora")
    smoke.add_argument("--jobs", type=int, default=None, help="presets run at once (default: one per core)")
    smoke.add_argument("--steps", type=int, default=3,
                       help="steps before the checkpoint the resume starts from (3: between two refreshes)")
    smoke.add_argument("--junit-xml", metavar="FILE", help="also write the results as JUnit XML")
    smoke.add_argument("--out", metavar="DIR", help="keep the miniature runs in DIR (default: a temporary dir)")
    data = sub.add_parser("data", help="list, fetch, or prepare (tokenize once into shards) datasets")
    data.add_argument("action", choices=["ls", "fetch", "prepare"])
    data.add_argument("name", nargs="*")
    data.add_argument("--force", action="store_true")
    report = sub.add_parser("report", help="one markdown table from the summary.json files under PATHs")
    report.add_argument("paths", nargs="+")
    report.add_argument("--per-run", action="store_true", help="one row per run (default: mean ± std over seeds)")
    compress = sub.add_parser("compress", help="truncate a trained run by SVD: ckpt=PATH rank=R | energy=E [out=DIR]")
    compress.add_argument("arguments", nargs="*", help="KEY=VALUE: ckpt, rank or energy, out")
    estimate.register(sub)
    return p


COMMANDS = {"report": cmd_report, "train": cmd_train, "ls": cmd_ls, "show": cmd_show, "validate": cmd_validate,
            "smoke": cmd_smoke, "compress": cmd_compress, "data": cmd_data,
            "estimate": lambda args: guarded(estimate.command, args)}


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
