"""`lrlab train|sweep|ls|show|validate|smoke|data|report|compress|export|estimate` — a thin dispatch over Hydra.

Every command composes the same `conf/train.yaml`. Bad input (unknown option, wrong type,
missing data, unreadable checkpoint, ...) prints one line `error: KEY=VALUE: what is allowed`
and exits with code 2; set HYDRA_FULL_ERROR=1 for the traceback.
"""

import argparse
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from lrlab import estimate
from lrlab.console import quiet_libraries
from lrlab.errors import ConfigError
from lrlab.hydra_app import Source, hydra_parser, runs_jobs
from lrlab.resolvers import freeze_stamp
from lrlab.rundir import first_missing, read_summary

EXIT_BAD_INPUT = 2
HIDDEN_GROUPS = ("hydra", "paths")


def fail(message: str, code: int = EXIT_BAD_INPUT):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def _one_line(err: BaseException, overrides: list[str] = ()) -> str:
    """Hydra's multi-line composition errors, reduced to `KEY=VALUE: what is allowed`."""
    text = str(err).strip()
    missing = re.search(r"Could not find '([^']+)'", text)
    if missing:
        group, option = _group_and_option(missing.group(1), text, overrides)
        listed = text.split("Available options", 1)[1].split("Config search path", 1)[0] if "Available options" in text else ""
        options = [ln.strip() for ln in listed.splitlines()[1:] if ln.strip()]
        allowed = f"one of {', '.join(options)}" if options else f"no such option (`lrlab ls {group}` lists them)"
        return f"{group}={option}: {allowed}"
    not_listed = re.search(r"Could not override '([^']+)'\. No match in the defaults list", text)
    if not_listed:
        key = not_listed.group(1)
        value = _value(list(overrides), key)
        return (f"{key}={value}: not a group in this config's defaults list (`lrlab ls` lists the groups; "
                f"+{key}={value} adds it)")
    unknown = re.search(r"Could not override '([^']+)'", text)
    if unknown:
        return f"{unknown.group(1)}: no such key (`lrlab show` prints the config; +{unknown.group(1)}=... adds one)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _group_and_option(path: str, text: str, overrides: list[str]) -> tuple[str, str]:
    """The group and option of a config that Hydra could not find (`hydra/launcher/nosuch`:
    group hydra/launcher; `experiment/galore/nosuch`: group experiment), from the override that
    asked for it, else from Hydra's list of options."""
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if f"{key}/{value}" == path:
            return key, value
    listed = re.search(r"Available options in '([^']+)'", text)
    group = listed.group(1) if listed else path.split("/", 1)[0]
    return group, path[len(group) + 1:] if path.startswith(group + "/") else path


def guarded(fn, *args, _overrides: list[str] = (), **kwargs):
    """Run fn; turn bad-input errors into one line and exit 2 (traceback with HYDRA_FULL_ERROR=1).
    `_overrides` are the user's overrides, to name the one a Hydra error is about."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return fn(*args, **kwargs)
    except (ConfigError, HydraException, OmegaConfBaseException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        fail(_one_line(err, _overrides))


# --- train ------------------------------------------------------------------------------
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


def job_dir(job: list[str], multirun: bool, num: int, source: Source) -> tuple[Path, str]:
    """Where Hydra will put this job, and the key that chose the place (for messages)."""
    fixed = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    node = source.compose([*job, *([f"hydra.job.num={num}"] if multirun else [])], hydra_node=True).hydra
    place = Path(str(OmegaConf.select(node, "sweep.dir" if multirun else "run.dir")))
    if multirun:
        place = place / str(OmegaConf.select(node, "sweep.subdir"))
    return Path(os.path.abspath(place)), fixed if _value(job, fixed) is not None else "run_name"


@dataclass
class Plan:
    """The jobs the pre-check checked: every job of a sweep whose jobs are known in advance (the
    basic sweeper), else one job per value of each swept key that can be known (choices, range
    values, interval bounds) with the other keys at their first value. `top` is the run dir
    (single run) or the sweep dir (multirun)."""
    jobs: list[list[str]]
    every_job: bool
    top: Path


def sweep_jobs(overrides: list[str], source: Source) -> tuple[list[list[str]], bool]:
    """(jobs to check, whether they are every job): the configured sweeper's params and the
    command line's sweep overrides, expanded as the basic sweeper would, or probed for others."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = source.compose(overrides, hydra_node=True, multirun=True).hydra.sweeper
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    with source.hydra() as app:
        parsed = OverridesParser.create(config_loader=app.config_loader).parse_overrides([*params, *overrides])
        if str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch], True
        return probe_jobs(parsed), False


def probe_jobs(parsed) -> list[list[str]]:
    """One job with every swept key at its first known value, then one per other known value of
    each key (an interval's bounds; a choice's or range's values)."""
    chosen: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if not override.is_sweep_override():
            chosen[key] = [override.get_value_element_as_str()]
        elif override.is_discrete_sweep():
            chosen[key] = list(override.sweep_string_iterator())
        else:
            interval = override.value()
            chosen[key] = [str(interval.start), str(interval.end)]
    first = {key: values[0] for key, values in chosen.items()}
    jobs = [[f"{k}={v}" for k, v in first.items()]]
    for key, values in chosen.items():
        for value in values[1:]:
            jobs.append([f"{k}={value if k == key else v}" for k, v in first.items()])
    return jobs


def precheck(overrides: list[str], multirun: bool, source: Source) -> Plan:
    """Make every check of every job before Hydra creates anything: a grid with one bad value
    fails in seconds, not after hours, and a refused input leaves the file system as it was."""
    from lrlab.train import compose, prepare

    check_overrides(overrides)
    jobs, every_job = sweep_jobs(overrides, source) if multirun else ([overrides], True)
    for num, job in enumerate(jobs):
        try:
            place, chosen_by = job_dir(job, multirun, num, source)
            prepare(compose(job, run_dir=str(place), source=source), place, chosen_by)
        except ConfigError as err:
            if len(jobs) == 1:
                raise
            what = "job" if every_job else "checked job (each swept value)"
            raise ConfigError(err.key, err.value, f"{err.allowed} ({what} {num} of the grid; no job was started)") from None
    top = job_dir(jobs[0], multirun, 0, source)[0]
    return Plan(jobs, every_job, top.parent if multirun else top)


def job_outcomes(sweep_dir: Path, failed: dict[int, tuple[str, list[str]]]) -> dict[int, tuple[list[str], str]]:
    """{job number: (its overrides, "" when it completed, else why not)} of a multirun: from the
    job dirs (summary.json, .hydra/) and `failed` (jobs that left no dir, e.g. refused late)."""
    outcomes = {num: (overrides, reason.split(";")[0]) for num, (reason, overrides) in failed.items()}
    for summary_path in sweep_dir.rglob("summary.json") if sweep_dir.is_dir() else []:
        records = summary_path.parent / ".hydra"
        if not (records / "hydra.yaml").is_file():
            continue
        num = int(OmegaConf.load(records / "hydra.yaml").hydra.job.num)
        summary = read_summary(summary_path.parent) or {}
        status = summary.get("status", "unreadable summary")
        reason = "" if status == "completed" else (summary.get("error") or status).split(";")[0]
        overrides = list(OmegaConf.load(records / "overrides.yaml")) if (records / "overrides.yaml").is_file() else []
        if num not in outcomes:
            outcomes[num] = (overrides, reason)
    return dict(sorted(outcomes.items()))


def grid_summary(outcomes: dict[int, tuple[list[str], str]]) -> str:
    jobs = [overrides for overrides, _ in outcomes.values()]
    parts = []
    for num, (overrides, reason) in outcomes.items():
        if reason:
            label = " ".join(item for item in overrides if not all(item in other for other in jobs))
            parts.append(f"job {num} ({label + ': ' if label else ''}{reason})")
    return f"{len(outcomes) - len(parts)} of {len(outcomes)} jobs completed; failed: {', '.join(parts)}"


def remove_if_empty(created: Path | None) -> None:
    """Folders that Hydra made for a run refused after it started, when nothing was written in them."""
    if created is not None and created.is_dir() and not any(p.is_file() for p in created.rglob("*")):
        shutil.rmtree(created, ignore_errors=True)


def launch_hydra(arguments: list[str]) -> None:
    """Hand the command line to the Hydra entry, as `lrlab train ARGUMENTS` (every Hydra flag)."""
    import importlib.util

    import __main__
    from lrlab import train

    # Lightning's `ddp` launcher re-runs `python -m <__main__'s module> <argv[1:]>` for each rank:
    # point it at the Hydra entry, which takes the same arguments.
    __main__.__spec__ = importlib.util.find_spec("lrlab.train")
    sys.argv = [sys.argv[0], *arguments]
    train.hydra_main()


def cmd_train(arguments: list[str]) -> None:
    """`lrlab train ARGUMENTS`: Hydra's flags and overrides; jobs are checked before Hydra runs them."""
    from lrlab import train

    args, unknown = hydra_parser().parse_known_args(arguments)
    if unknown:
        fail(f"{unknown[0]}: not a flag of lrlab train (`lrlab train --help` lists them)")
    freeze_stamp()
    if not runs_jobs(args):
        return launch_hydra(arguments)
    source = guarded(Source.from_args, args)
    overrides = list(args.overrides)
    multirun = guarded(source.multirun, overrides, args.multirun, _overrides=overrides)
    plan = guarded(precheck, overrides, multirun, source, _overrides=overrides)
    created = first_missing(plan.top)
    train.FAILED.clear()
    try:
        launch_hydra(arguments)
    except SystemExit as done:
        if done.code == EXIT_BAD_INPUT:
            remove_if_empty(created)
        raise
    if multirun:
        outcomes = job_outcomes(plan.top, train.FAILED)
        if any(reason for _, reason in outcomes.values()):
            print(grid_summary(outcomes), file=sys.stderr)
            sys.exit(1)


def cmd_sweep(args) -> None:
    """`lrlab sweep sweep=NAME [sweep.n_trials=N] [train overrides]` (see lrlab.sweep.study)."""
    from lrlab.sweep import study as sweeps

    overrides = list(args.overrides)
    freeze_stamp()
    source = Source.from_args(args)
    guarded(check_overrides, overrides)
    sweep = guarded(sweeps.plan, overrides, source, _overrides=overrides)
    guarded(sweeps.precheck, sweep, _overrides=overrides)
    print(f"sweep dir: {sweep.sweep_dir} ({sweep.n_trials} trials, {sweep.settings.n_jobs} at a time; "
          f"{sweep.settings.sampler} sampler, {sweep.settings.pruner} pruner, {sweep.mode} {sweep.metric})", flush=True)
    study = guarded(sweeps.optimise, sweep, lambda line: print(line, flush=True), _overrides=overrides)
    print(sweeps.summary_line(study, sweep))
    print(f"report: lrlab report {sweep.sweep_dir}")
    sys.exit(0 if any(t.state.name == "COMPLETE" for t in study.trials) else 1)


# --- ls / show / validate ----------------------------------------------------------------
def describe(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


def split_words(words: list[str]) -> tuple[list[str], list[str]]:
    """(plain words, KEY=VALUE overrides) of a command line."""
    return [w for w in words if "=" not in w], [w for w in words if "=" in w]


def cmd_ls(args) -> None:
    names, overrides = split_words(args.words)
    source = Source.from_args(args)
    options: dict[str, dict[str, Path]] = {}
    for root in guarded(source.config_dirs, overrides, _overrides=overrides):
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in HIDDEN_GROUPS):
            found = options.setdefault(folder.name, {})
            for path in sorted(folder.rglob("*.yaml")):
                found.setdefault(str(path.relative_to(folder).with_suffix("")), path)
    groups = sorted(options)
    unknown = [name for name in names if name not in groups]
    if unknown:
        fail(f"group={unknown[0]!r}: one of {', '.join(groups)}")
    for group in names or groups:
        print(f"{group}:")
        for name, path in sorted(options[group].items()):
            print(f"  {name:<34} {describe(path)}")


SHOWN_HYDRA_KEYS = ("mode", "run", "sweep", "launcher", "sweeper", "searchpath")


def cmd_show(args) -> None:
    from lrlab.train import compose

    source = Source.from_args(args)
    overrides = list(args.overrides)

    def show():
        freeze_stamp()
        cfg = compose(overrides, run_dir="/nonexistent", source=source)
        cfg = compose(overrides, run_dir=f"{cfg.paths.output_dir}/runs/{cfg.run_name}", source=source)
        print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        if args.hydra:
            full = source.compose(overrides, hydra_node=True, multirun=True)
            print(OmegaConf.to_yaml({"hydra": {key: _resolved(full.hydra, key) for key in SHOWN_HYDRA_KEYS}}), end="")

    guarded(show, _overrides=overrides)


def _resolved(node, key: str):
    """`node[key]` as plain data, each value resolved where it can be (a job's number is known
    only in a running job: such a value is shown as written)."""
    child = node._get_node(key)
    if OmegaConf.is_dict(child) and not child._is_interpolation():
        return {name: _resolved(child, name) for name in child}
    try:
        value = node[key]
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except Exception:  # an interpolation that only a running job can resolve (hydra.job.num, runtime.*)
        return child._value()


def cmd_validate(args) -> None:
    from lrlab.validate import validate_presets

    source = Source.from_args(args)
    overrides = list(args.overrides)
    broken = guarded(validate_presets, args.presets or None, overrides, source, _overrides=overrides)
    sys.exit(1 if broken else 0)


def cmd_smoke(args) -> None:
    import tempfile
    import time

    from lrlab import smoke
    from lrlab.parallel import cores
    from lrlab.validate import presets

    chosen = guarded(smoke.select, list(args.patterns), presets())
    print(f"smoke: {len(chosen)} presets in miniature, {args.jobs or cores()} at a time")
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
    from lrlab.report.write import report

    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        fail(f"paths={' '.join(missing)}: no such folder")
    done = guarded(report, args.paths, args.out, by_seed=not args.per_run)
    print(done["markdown"])
    print(f"report: {done['out']} (report.md, runs.csv, {sum(f.endswith('.png') for f in done['files'])} figures)")


def cmd_export(args) -> None:
    from lrlab.export import export

    done = guarded(export, args.run_dir, args.out)
    tokenizer = " with its tokenizer" if done["tokenizer"] else ""
    print(f"exported {done['model']} ({done['format']}, {done['saved_with']}){tokenizer}: {done['out']}")


def cmd_compress(args) -> None:
    from lrlab.compress import main as compress

    guarded(compress, list(args.arguments))


def source_flags() -> argparse.ArgumentParser:
    """Hydra's flags that choose the configs, for the commands that compose them."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--config-path", "-cp", help="the primary config's folder (as lrlab train -cp)")
    flags.add_argument("--config-name", "-cn", help="the primary config (default: train)")
    flags.add_argument("--config-dir", "-cd", help="an extra config folder searched first (your own presets)")
    return flags


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lrlab", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("train", add_help=False,
                   help="one run, or a grid or sweep with -m: a Hydra app (`lrlab train --help`)")
    configs = source_flags()
    sweep = sub.add_parser("sweep", parents=[configs],
                           help="optuna search: sweep=NAME [sweep.n_trials=N] [train overrides]; a rerun continues")
    sweep.add_argument("overrides", nargs="*")
    ls = sub.add_parser("ls", parents=[configs], help="config groups, their options and the experiment presets")
    ls.add_argument("words", nargs="*", metavar="GROUP | hydra.searchpath=[...]")
    show = sub.add_parser("show", parents=[configs], help="print the composed, resolved config")
    show.add_argument("--hydra", action="store_true", help="also print Hydra's run/sweep dirs, launcher, sweeper")
    show.add_argument("overrides", nargs="*")
    validate = sub.add_parser("validate", parents=[configs],
                              help="compose and instantiate every preset (yours too) without training")
    validate.add_argument("--preset", dest="presets", action="append", help="only this preset (repeatable)")
    validate.add_argument("overrides", nargs="*")
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
    report = sub.add_parser("report", help="markdown + CSV tables and PNG plots from the summary.json files under PATHs")
    report.add_argument("paths", nargs="+")
    report.add_argument("--per-run", action="store_true", help="one row per run (default: mean ± std over seeds)")
    report.add_argument("--out", metavar="DIR", help="write report.md, runs.csv and the plots there")
    export = sub.add_parser("export", help="a trained run as a Hugging Face / PEFT folder (or safetensors)")
    export.add_argument("run_dir")
    export.add_argument("--out", metavar="DIR", help="the folder to write (default: RUN_DIR/export); must not exist")
    compress = sub.add_parser("compress", help="truncate a trained run by SVD: ckpt=PATH rank=R | energy=E [out=DIR]")
    compress.add_argument("arguments", nargs="*", help="KEY=VALUE: ckpt, rank or energy, out")
    estimate.register(sub)
    return p


COMMANDS = {"report": cmd_report, "sweep": cmd_sweep, "ls": cmd_ls, "show": cmd_show, "validate": cmd_validate,
            "smoke": cmd_smoke, "compress": cmd_compress, "export": cmd_export,
            "data": cmd_data, "estimate": lambda args: guarded(estimate.command, args)}
HYDRA_COMMANDS = {"train": cmd_train}  # these take their own command line (Hydra's flags)
COMPLETION_FLAGS = ("-sc", "--shell-completion")


def complete(argv: list[str]) -> None:
    """`lrlab -sc ...`: the bash completion that `lrlab train -sc install=bash` installs calls the
    program by its name; the words after `train` are completed by Hydra, the command itself here."""
    line = os.environ.get("COMP_LINE", "")
    words = line.split()
    if len(words) >= 2 and words[1] in HYDRA_COMMANDS and (len(words) > 2 or line.endswith(" ")):
        os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]]) + (" " if line.endswith(" ") else "")
        return cmd_train(argv)
    if any(a.startswith("query=") for a in argv):
        typed = words[1] if len(words) == 2 and not line.endswith(" ") else ""
        print(" ".join(name for name in [*HYDRA_COMMANDS, *COMMANDS] if name.startswith(typed)))
        return None
    return cmd_train(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    try:
        if argv and argv[0] in HYDRA_COMMANDS:
            HYDRA_COMMANDS[argv[0]](argv[1:])
        elif argv and argv[0] in COMPLETION_FLAGS:
            complete(argv)
        else:
            args = parser().parse_args(argv)
            COMMANDS[args.command](args)
        sys.stdout.flush()
    except BrokenPipeError:  # `lrlab ls | head`: the reader left; end quietly, as other CLI tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


if __name__ == "__main__":
    main()
