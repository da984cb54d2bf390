"""`lrlab report`: the runs under some folders as one table (markdown and CSV).

A run is a folder with a `config.yaml` (lrlab writes it first); its `summary.json` holds the
outcome, and a run killed before writing one is listed as `no summary`. Runs whose configs differ
only in `seed` (and where they were written: run_name, paths, logger, resume) are one group, a row
with mean ± std over its seeds; two runs with the same seed are never seeds of one group, so each
gets its own row. Every run that did not complete (failed, interrupted, pruned, no summary) is a
row of its own with its status and error: nothing is dropped.

Columns: the run's label (its overrides, else its folder), method (the groups it took: optimizer,
adapter, parametrization, regularizer, loss), rank, seeds, status, each final validation metric,
the best value of the objective metric, optimizer-state and peak memory (MiB), throughput (tokens/s,
else samples/s), wall time (s).
"""

import csv
import io
import json
import math
import statistics
from pathlib import Path

import yaml

IGNORED = ("seed=", "run_name=", "paths.", "hydra.", "logger=", "resume=")
NOT_THE_CONFIG = ("seed", "run_name", "paths", "logger", "resume", "ckpt_path", "threads")
METHOD_GROUPS = ("optimizer", "adapter", "parametrization", "regularizer", "loss")
RANK_KEYS = (("optimizer", "rank"), ("adapter", "r"), ("adapter", "init_r"), ("parametrization", "rank"))
FACTORIES = ("build", "make", "create")
NO_SUMMARY = "no summary"
MiB = 2**20


def run_dirs(root: Path) -> list[Path]:
    if (root / "config.yaml").is_file():
        return [root]
    return sorted((p.parent for p in root.rglob("config.yaml") if p.parent.name != ".hydra"), key=run_order)


def run_order(path: Path) -> tuple:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def collect(paths: list[str]) -> list[dict]:
    """One record per run dir under `paths`: its summary (or status `no summary`), config, label
    and method."""
    return [read_run(run_dir) for root in map(Path, paths) for run_dir in run_dirs(root)]


def read_run(run_dir: Path) -> dict:
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {
        "status": NO_SUMMARY, "error": "the run ended before writing summary.json", "metrics": {"final": {}, "best": {}}}
    overrides_path = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_path.read_text()) if overrides_path.exists() else []
    label = " ".join(o for o in overrides if not o.startswith(IGNORED)) or run_dir.name
    return {**summary, "label": label, "dir": str(run_dir), "config": config,
            "method": method_of(run_dir, config), "rank": rank_of(config)}


def method_of(run_dir: Path, config: dict) -> str:
    """The options of the method groups that are not `none` (Hydra's choices where the run was
    launched by Hydra, else the `_target_` of each group's node)."""
    choices = {}
    hydra_path = run_dir / ".hydra" / "hydra.yaml"
    if hydra_path.exists():
        choices = (yaml.safe_load(hydra_path.read_text()).get("hydra", {}).get("runtime", {}).get("choices") or {})
    names = []
    for group in METHOD_GROUPS:
        node = config.get(group) or {}
        name = choices.get(group) or (target_name(node) if isinstance(node, dict) else "")
        if name and name not in ("none", "cross_entropy", "CrossEntropy") and (node or group == "optimizer"):
            names.append(str(name))
    return "+".join(names) or "–"


def target_name(node: dict) -> str:
    """`lrlab.optim.adamw.build` -> adamw; `lrlab.adapters.peft_glue.LoRA` -> LoRA."""
    parts = str(node.get("_target_", "")).split(".")
    return parts[-2] if parts[-1] in FACTORIES and len(parts) > 1 else parts[-1]


def rank_of(config: dict) -> int | None:
    for group, key in RANK_KEYS:
        value = (config.get(group) or {}).get(key)
        if isinstance(value, int):
            return value
    return None


def group_key(run: dict) -> str:
    """The config without what differs between seeds of one setting: every `seed` key (data and
    model seeds follow the run's), where the run was written (its dir, wherever it appears)."""
    run_dir = str((run["config"].get("paths") or {}).get("run_dir") or run["dir"])

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "seed"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node.replace(run_dir, "<run dir>") if isinstance(node, str) else node

    config = {k: v for k, v in run["config"].items() if k not in NOT_THE_CONFIG}
    return json.dumps(strip(config), sort_keys=True, default=str)


def groups(runs: list[dict], by_seed: bool = True) -> list[list[dict]]:
    """Completed runs grouped by their config without the seed (each alone unless `by_seed`);
    a group whose seeds repeat is split into single runs; every other run is a group of one."""
    found: dict[str, list[dict]] = {}
    for run in runs:
        together = by_seed and run["status"] == "completed"
        found.setdefault(group_key(run) if together else run["dir"], []).append(run)
    result = []
    for members in found.values():
        seeds = [m.get("seed") for m in members]
        result.extend([members] if len(set(seeds)) == len(seeds) else [[m] for m in members])
    return result


def throughput(run: dict) -> float | None:
    rate = run.get("throughput") or {}
    for key in ("tokens_per_second", "samples_per_second"):
        if key in rate:
            return float(rate[key])
    return None


def objective_metric(run: dict) -> str:
    return str((run["config"].get("objective") or {}).get("metric", "val/loss"))


def mean_std(values: list[float]) -> tuple[float, float] | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    found = mean_std(values)
    if found is None:
        return "–"
    if len([v for v in values if v is not None]) == 1:
        return f"{found[0]:.4g}"
    return f"{found[0]:.4g} ± {found[1]:.2g}"


def rows(runs: list[dict], by_seed: bool = True) -> tuple[list[str], list[dict]]:
    """(metric names, one row per group): each row's cells as (mean, std) pairs or text."""
    metrics = sorted({m for r in runs for m in (r["metrics"].get("final") or {})})
    table = []
    for members in groups(runs, by_seed):
        first = members[0]
        objective = objective_metric(first)
        row = {"run": first["label"], "method": first["method"], "rank": first["rank"], "seeds": len(members),
               "status": first["status"], "error": first.get("error") or "",
               "dirs": [m["dir"] for m in members], "objective": objective}
        for name in metrics:
            row[name] = [m["metrics"]["final"].get(name) for m in members if m["metrics"].get("final")]
        row["best " + objective] = [m["metrics"]["best"].get(objective) for m in members if m["metrics"].get("best")]
        row["state MiB"] = [m["optimizer_state_bytes"] / MiB for m in members if "optimizer_state_bytes" in m]
        row["peak MiB"] = [m["peak_memory_bytes"] / MiB for m in members if "peak_memory_bytes" in m]
        row["throughput/s"] = [throughput(m) for m in members]
        row["wall s"] = [m.get("wall_seconds") for m in members]
        row["step ms"] = [((m["metrics"].get("other") or {}).get("step_ms")) for m in members]
        table.append(row)
    return metrics, table


def value_columns(metrics: list[str], table: list[dict]) -> list[str]:
    bests = sorted({"best " + row["objective"] for row in table})
    return [*metrics, *bests, "state MiB", "peak MiB", "throughput/s", "wall s"]


def markdown(runs: list[dict], by_seed: bool = True) -> str:
    metrics, table = rows(runs, by_seed)
    values = value_columns(metrics, table)
    head = ["run", "method", "rank", "n", "status", *values]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        status = row["status"] + (f": {row['error']}" if row["error"] else "")
        cells = [row["run"], row["method"], "–" if row["rank"] is None else str(row["rank"]), str(row["seeds"]),
                 status.replace("|", "/")]
        cells += [fmt(row.get(name, [])) for name in values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_text(runs: list[dict], by_seed: bool = True) -> str:
    """The same rows, each value column as `<name> mean` and `<name> std` (std 0 for one seed)."""
    metrics, table = rows(runs, by_seed)
    values = value_columns(metrics, table)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["run", "method", "rank", "seeds", "status", "error",
                     *[f"{name} {part}" for name in values for part in ("mean", "std")], "dirs"])
    for row in table:
        cells = [row["run"], row["method"], row["rank"] if row["rank"] is not None else "", row["seeds"],
                 row["status"], row["error"]]
        for name in values:
            found = mean_std(row.get(name, []))
            cells += ["", ""] if found is None else [found[0], found[1]]
        writer.writerow([*cells, " ".join(row["dirs"])])
    return out.getvalue()
