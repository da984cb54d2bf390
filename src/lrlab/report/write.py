"""`lrlab report DIRS... [--out DIR]`: `report.md` (the table, then for each sweep dir its best
trial and parameter importances), `runs.csv` and the PNG figures of `plots.py`, in `--out`
(default `<first DIR>/report`). The output folder is made only once the runs are read."""

from pathlib import Path

from lrlab.errors import require
from lrlab.report import plots
from lrlab.report.table import collect, csv_text, markdown, rows
from lrlab.rundir import write_text

STUDY_FILE = "study.db"


def sweep_section(sweep_dir: Path, out: Path, tag: str) -> tuple[list[str], list[Path]]:
    """The markdown lines and figures of one sweep: its best trial, the importance of each
    parameter (where at least two trials completed with different values), the history."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="lrlab", storage=f"sqlite:///{sweep_dir / STUDY_FILE}")
    mode = "min" if study.direction == optuna.study.StudyDirection.MINIMIZE else "max"
    trials = study.get_trials(deepcopy=False)
    counts = {}
    for trial in trials:
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    lines = [f"## Sweep {sweep_dir}", "",
             "trials: " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())), ""]
    figures = [plots.history(trials, out / f"{tag}history.png", mode)]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if not complete:
        return [*lines, "no trial completed", ""], figures
    best = study.best_trial
    lines += [f"best trial: {best.number} ({mode} objective {best.value:.6g}, run dir {sweep_dir / str(best.number)})",
              "", "| parameter | best value | importance |", "|---|---|---|"]
    importances = parameter_importances(study, complete)
    for name, value in best.params.items():
        share = importances.get(name)
        lines.append(f"| {name} | {value:.6g} | {'–' if share is None else f'{share:.3f}'} |"
                     if isinstance(value, float) else f"| {name} | {value} | {'–' if share is None else f'{share:.3f}'} |")
    if importances:
        figures.append(plots.importance(importances, out / f"{tag}importance.png"))
    return [*lines, ""], figures


def parameter_importances(study, complete: list) -> dict[str, float]:
    import optuna

    varied = {name for name in complete[0].params if len({repr(t.params.get(name)) for t in complete}) > 1}
    if len(complete) < 2 or not varied:
        return {}
    return optuna.importance.get_param_importances(study, params=sorted(varied))


def report(paths: list[str], out: str | None = None, by_seed: bool = True) -> dict:
    """Write the report; returns {"markdown": text, "out": folder, "files": [paths]}."""
    runs = collect(paths)
    require(bool(runs), "paths", " ".join(paths), "folders holding lrlab run dirs (a config.yaml in each)")
    out_dir = Path(out) if out else Path(paths[0]) / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    _, table = rows(runs, by_seed)
    text = [markdown(runs, by_seed), ""]
    modes = {"min" if r["config"].get("objective", {}).get("mode", "min") == "min" else "max" for r in runs}
    files = [plots.loss_curves(table, out_dir / "loss_curves.png"),
             plots.pareto(table, out_dir / "pareto.png", modes.pop() if len(modes) == 1 else "min"),
             plots.step_time(table, out_dir / "step_time.png")]
    sweeps = [Path(p) for p in paths if (Path(p) / STUDY_FILE).is_file()]
    for sweep_dir in sweeps:
        lines, figures = sweep_section(sweep_dir, out_dir, f"{sweep_dir.name}_" if len(sweeps) > 1 else "")
        text += lines
        files += figures
    markdown_text = "\n".join(text)
    write_text(out_dir / "report.md", markdown_text + "\n")
    write_text(out_dir / "runs.csv", csv_text(runs, by_seed))
    files += [out_dir / "report.md", out_dir / "runs.csv"]
    return {"markdown": markdown_text, "out": str(out_dir), "files": [str(f) for f in files]}
