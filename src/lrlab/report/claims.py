"""Run a labelled grid of configurations over seeds and tabulate their summaries.

Used by `scripts/claims_*.py`: each claim is a few named override lists, trained in-process
with the same runner as `lrlab train`, reported as mean ± std over seeds.
"""

import re
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

from lrlab.train import compose, run


def run_grid(grid: dict[str, list[str]], seeds: list[int], out_dir: str | None = None,
             progress: Callable[[str], None] = print) -> dict[str, list[dict]]:
    root = Path(out_dir or tempfile.mkdtemp(prefix="lrlab-claims-"))
    results: dict[str, list[dict]] = {}
    for label, overrides in grid.items():
        for seed in seeds:
            run_dir = root / re.sub(r"[^A-Za-z0-9_.-]+", "_", label) / f"seed{seed}"
            summary = run(compose([*overrides, f"seed={seed}", "logger=csv"], run_dir=str(run_dir)))
            results.setdefault(label, []).append(summary)
            progress(f"  {label} seed {seed}: {summary['metrics']['final']}")
    return results


def mean_std(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}g}"
    return f"{statistics.mean(values):.{digits}g} ± {statistics.stdev(values):.2g}"


def table(results: dict[str, list[dict]], columns: dict[str, Callable[[dict], float]]) -> str:
    lines = ["| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for label, summaries in results.items():
        cells = [mean_std([fn(s) for s in summaries]) for fn in columns.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
