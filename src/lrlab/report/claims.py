"""Run a labelled grid of configurations over seeds and tabulate their summaries.

Used by `scripts/claims_*.py`: each claim is a few named override lists, trained in-process
with the same runner as `lrlab train`, reported as mean ± std over seeds. A rerun with the same
`--out` reuses every completed run of an identical config and resumes an interrupted one from
its last checkpoint, so a stopped grid continues where it was.
"""

import csv
import hashlib
import json
import math
import re
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from lrlab.errors import require
from lrlab.train import compose, config_hash, run


def run_grid(grid: dict[str, list[str]], seeds: list[int], out_dir: str | None = None,
             progress: Callable[[str], None] = print) -> dict[str, list[dict]]:
    root = Path(out_dir or tempfile.mkdtemp(prefix="lrlab-claims-"))
    results: dict[str, list[dict]] = {}
    for label, folder in folder_names(grid).items():
        overrides = grid[label]
        for seed in seeds:
            run_dir = root / folder / f"seed{seed}"
            cfg = compose([*overrides, f"seed={seed}", "logger=csv", "resume=auto"], run_dir=str(run_dir))
            summary = finished(run_dir, cfg) or run(cfg)
            results.setdefault(label, []).append({**summary, "run_dir": str(run_dir)})
            progress(f"  {label} seed {seed}: {summary['metrics']['final']}")
    return results


def folder_names(grid: dict[str, list[str]]) -> dict[str, str]:
    """A file-safe folder per label; a label whose safe form an earlier one already took (they
    differ only in symbols, e.g. "AdamW" and "⊥AdamW") gets a short hash of itself appended."""
    names: dict[str, str] = {}
    for label in grid:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
        if name in names.values():
            name += "_" + hashlib.sha256(label.encode()).hexdigest()[:8]
        names[label] = name
    return names


def finished(run_dir: Path, cfg) -> dict | None:
    """The summary of a completed run of this very config in `run_dir` (a rerun skips it);
    None where there is none yet or it was interrupted (the run then resumes from last.ckpt)."""
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    summary = json.loads(path.read_text())
    require(summary["config_hash"] == config_hash(cfg), "out", str(run_dir),
            "holds a run of another config: choose another output folder")
    return summary if summary["status"] == "completed" else None


def final(metric: str) -> Callable[[dict], float]:
    """A table column: the run's last validation value of `metric` (nan where it has none)."""
    return lambda summary: summary["metrics"]["final"].get(metric, float("nan"))


def best(metric: str) -> Callable[[dict], float]:
    """A table column: the run's best validation value of `metric` (nan where it has none)."""
    return lambda summary: summary["metrics"]["best"].get(metric, float("nan"))


def logged(summary: dict, metric: str) -> list[tuple[int, float]]:
    """(steps taken, value) of every logged `metric`, read from the run's `csv/metrics.csv`."""
    with open(Path(summary["run_dir"]) / "csv" / "metrics.csv") as rows:
        return [(int(row["step"]) + 1, float(row[metric])) for row in csv.DictReader(rows) if row.get(metric)]


def first_step(summary: dict, metric: str, threshold: float) -> float:
    """The first logged step at which `metric` reached `threshold` (nan if it never did)."""
    return next((float(step) for step, value in logged(summary, metric) if value >= threshold), float("nan"))


def last_logged(summary: dict, metric: str) -> float:
    values = logged(summary, metric)
    return values[-1][1] if values else float("nan")


def mean_std(values: list[float], digits: int = 4) -> str:
    """Mean ± std of the finite values; "(k/n)" when only k of n are finite (e.g. a threshold some
    seeds never reach; "— (0/n)": none did); a count equal over seeds prints exactly (91,053)."""
    done = [v for v in values if math.isfinite(v)]
    if not done:
        text = "—"
    elif len(set(done)) == 1 and float(done[0]).is_integer():
        text = f"{int(done[0]):,}"
    elif len(done) == 1:
        text = f"{done[0]:.{digits}g}"
    else:
        text = f"{statistics.mean(done):.{digits}g} ± {statistics.stdev(done):.2g}"
    return text if len(done) == len(values) else f"{text} ({len(done)}/{len(values)})"


def table(results: dict[str, list[dict]], columns: dict[str, Callable[[dict], float]]) -> str:
    lines = ["| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label, summaries in results.items():
        cells = [mean_std([fn(s) for s in summaries]) for fn in columns.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
