"""The objective a run reports to a sweeper (a Hydra sweeper through `lrlab train -m`, or
`lrlab sweep`): the final value of `objective.metric` (a validation metric in `summary.json`),
minimised or maximised as `objective.mode` says. A run that did not complete, or whose value is
missing or not finite, scores the worst value (inf for min, -inf for max), so a sweeper ranks it
last instead of stopping.
"""

import math


def worst(mode: str) -> float:
    return math.inf if mode == "min" else -math.inf


def value(summary: dict | None, metric: str, mode: str) -> float:
    """The run's objective: its final `metric` when it completed, else the worst value."""
    if summary is None or summary.get("status") != "completed":
        return worst(mode)
    found = summary["metrics"]["final"].get(metric)
    return float(found) if found is not None and math.isfinite(found) else worst(mode)


def missing(summary: dict | None, metric: str) -> str | None:
    """Why a completed run has no objective (the metric is not one it logged); None otherwise."""
    if summary is None or summary.get("status") != "completed" or metric in summary["metrics"]["final"]:
        return None
    logged = ", ".join(sorted(summary["metrics"]["final"])) or "none"
    return f"objective.metric={metric!r}: not a validation metric of this run: one of {logged}"
