"""The report's figures (matplotlib, headless through the Agg backend), one PNG each:

- `loss_curves.png`: training loss against step, one colour per group (each seed a line), and
  the logged validation loss as markers; read from each run's `csv/metrics.csv`.
- `pareto.png`: the objective's final value against optimizer-state memory, one point per
  group (mean, with the std over seeds as error bars), the Pareto front (less memory and a
  better value) joined by a line.
- `step_time.png`: mean step time per group (ms), std over seeds as error bars.
- for a sweep dir (`study.db`): `history.png` (each trial's objective, the best so far as a
  line, pruned and failed trials marked at the axis) and `importance.png` (optuna's parameter
  importances, fANOVA).
"""

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

from lrlab.report.table import mean_std  # noqa: E402


def label_of(row: dict, common: set[str] = frozenset()) -> str:
    """The row's overrides without those every row shares, then its method and rank."""
    rank = f" r={row['rank']}" if row["rank"] is not None else ""
    own = " ".join(word for word in row["run"].split() if word not in common)
    text = f"{own} ({row['method']}{rank})" if own and own != row["method"] else row["method"] + rank
    return text if len(text) <= 60 else text[:57] + "..."


def shared_words(table: list[dict]) -> set[str]:
    words = [set(row["run"].split()) for row in table]
    return set.intersection(*words) if len(words) > 1 else set()


def logged(run_dir: str, column: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one column of the run's `csv/metrics.csv` (rows where it is logged)."""
    path = Path(run_dir) / "csv" / "metrics.csv"
    steps, values = [], []
    if not path.is_file():
        return steps, values
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row.get(column) not in (None, "") and row.get("step") not in (None, ""):
                steps.append(int(float(row["step"])))
                values.append(float(row[column]))
    return steps, values


def save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def loss_curves(table: list[dict], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    common = shared_words(table)
    for index, row in enumerate(table):
        colour = colours[index % len(colours)]
        for number, run_dir in enumerate(row["dirs"]):
            steps, values = logged(run_dir, "train/loss")
            axis.plot(steps, values, color=colour, alpha=0.8, linewidth=1,
                      label=f"{label_of(row, common)} [{row['status']}]" if number == 0 else None)
            steps, values = logged(run_dir, "val/loss")
            axis.plot(steps, values, "o", color=colour, markersize=3)
    axis.set_xlabel("step")
    axis.set_ylabel("loss (line: train, dots: validation)")
    axis.set_title("Loss curves")
    if table:
        axis.legend(fontsize=7)
    return save(figure, path)


def pareto_front(points: list[tuple[float, float]], lower_is_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both memory (less) and value (better)."""
    sign = 1 if lower_is_better else -1
    front, best = [], math.inf
    for memory, value in sorted(points, key=lambda p: (p[0], sign * p[1])):
        if sign * value < best:
            front.append((memory, value))
            best = sign * value
    return front


def pareto(table: list[dict], path: Path, mode: str) -> Path:
    figure, axis = plt.subplots(figsize=(7, 4.5))
    points, common = [], shared_words(table)
    for row in table:
        metric = row["objective"]
        value = mean_std(row.get(metric, []) or [])
        memory = mean_std(row["state MiB"])
        if value is None or memory is None:
            continue
        axis.errorbar(memory[0], value[0], xerr=memory[1], yerr=value[1], fmt="o", capsize=3, label=label_of(row, common))
        points.append((memory[0], value[0]))
    front = pareto_front(points, mode == "min")
    if front:
        axis.plot(*zip(*front), "--", color="grey", linewidth=1, label="Pareto front")
    axis.set_xlabel("optimizer state (MiB)")
    axis.set_ylabel(f"final {table[0]['objective'] if table else 'objective'}")
    axis.set_title("Quality against optimizer-state memory")
    if points:
        axis.legend(fontsize=7)
    return save(figure, path)


def step_time(table: list[dict], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(7, max(2.5, 0.4 * len(table) + 1)))
    common = shared_words(table)
    shown = [(label_of(row, common), mean_std(row["step ms"])) for row in table]
    shown = [(label, found) for label, found in shown if found is not None]
    axis.barh([label for label, _ in shown], [found[0] for _, found in shown],
              xerr=[found[1] for _, found in shown], capsize=3)
    axis.set_xlabel("step time (ms)")
    axis.set_title("Step time")
    axis.tick_params(axis="y", labelsize=7)
    return save(figure, path)


def history(trials: list, path: Path, mode: str) -> Path:
    """Each trial's value by number; the best so far; pruned/failed trials as crosses at the
    bottom of the axis (they have no final value)."""
    figure, axis = plt.subplots(figsize=(7, 4.5))
    done = [(t.number, t.value) for t in trials if t.state.name == "COMPLETE"]
    if done:
        numbers, values = zip(*done)
        axis.plot(numbers, values, "o", label="trial")
        pick = min if mode == "min" else max
        best = [pick(values[:i + 1]) for i in range(len(values))]
        axis.step(numbers, best, where="post", color="red", label="best so far")
    for state, marker in (("PRUNED", "x"), ("FAIL", "v")):
        numbers = [t.number for t in trials if t.state.name == state]
        if numbers:
            axis.plot(numbers, [0] * len(numbers), marker, color="grey", transform=axis.get_xaxis_transform(),
                      clip_on=False, label=state.lower())
    axis.set_xlabel("trial")
    axis.set_ylabel("objective")
    axis.set_title("Optimisation history")
    if trials:
        axis.legend(fontsize=7)
    return save(figure, path)


def importance(importances: dict[str, float], path: Path) -> Path:
    figure, axis = plt.subplots(figsize=(6, max(2.5, 0.4 * len(importances) + 1)))
    names = list(importances)[::-1]
    axis.barh(names, [importances[n] for n in names])
    axis.set_xlabel("importance (fANOVA)")
    axis.set_title("Parameter importance")
    return save(figure, path)
