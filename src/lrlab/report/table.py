"""`lrlab report`: collect `summary.json` files into one markdown table.

Runs whose overrides differ only in `seed` (and `run_name`) form one row with mean ± std over
seeds when `by_seed` is on; the metric columns are the union of final validation metrics.
"""

import json
import statistics
from pathlib import Path

import yaml

IGNORED = ("seed=", "run_name=", "paths.", "hydra.", "logger=")


def collect(paths: list[str]) -> list[dict]:
    runs = []
    for root in map(Path, paths):
        for summary_path in sorted(root.rglob("summary.json")) if root.is_dir() else [root]:
            summary = json.loads(summary_path.read_text())
            overrides_path = summary_path.parent / ".hydra" / "overrides.yaml"
            overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
            label = " ".join(o for o in overrides if not o.startswith(IGNORED)) or summary_path.parent.name
            runs.append({"label": label, "dir": str(summary_path.parent), **summary})
    return runs


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def markdown(runs: list[dict], by_seed: bool = True) -> str:
    groups: dict[str, list[dict]] = {}
    for r in runs:
        groups.setdefault(r["label"] if by_seed else r["dir"], []).append(r)
    metrics = sorted({m for r in runs for m in r["metrics"]["final"]})
    head = ["run", "n", "status", *metrics, "state MiB", "peak MiB", "throughput/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, members in groups.items():
        statuses = ",".join(sorted({m["status"] for m in members}))
        cells = [label, str(len(members)), statuses]
        cells += [_fmt([m["metrics"]["final"][k] for m in members if k in m["metrics"]["final"]]) for k in metrics]
        cells.append(_fmt([m["optimizer_state_bytes"] / 2**20 for m in members]))
        cells.append(_fmt([m["peak_memory_bytes"] / 2**20 for m in members]))
        cells.append(_fmt([next(iter(m["throughput"].values()), 0.0) for m in members]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
