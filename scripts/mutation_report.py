"""Mutation score per module from mutmut's results (run after `mutmut run`, as `make mutation` does).

Score = killed / (killed + survived) over the mutants that were run (a timeout counts as killed);
mutants no selected test reaches are counted apart ("no tests"); mutants not run (outside MUTANTS)
are left out. Prints a Markdown table and the surviving mutants; `--names FILE` restricts both to
the mutants listed in FILE (one name a line), e.g. a sample.
"""

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict

KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def results(path: str | None) -> dict[str, str]:
    """name -> verdict, from `mutmut results --all true` (or a saved copy of its output)."""
    out = open(path).read() if path else subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"], capture_output=True, text=True, check=True).stdout
    return dict(re.match(r"\s*(\S+): (.+)", line).groups() for line in out.splitlines() if ": " in line)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", help="only the mutants listed in this file")
    parser.add_argument("--saved", help="a saved output of `mutmut results --all true` instead of the current one")
    args = parser.parse_args()
    status = results(args.saved)
    if args.names:
        wanted = set(open(args.names).read().split())
        status = {k: v for k, v in status.items() if k in wanted}
    by_module: dict[str, Counter] = defaultdict(Counter)
    for name, verdict in status.items():
        by_module[name.split(".x")[0]][verdict] += 1
    print("| module | mutants run | killed | survived | no tests | score |")
    print("|---|---:|---:|---:|---:|---:|")
    total = Counter()
    for mod, counts in sorted(by_module.items()):
        killed = sum(counts[k] for k in KILLED)
        survived, untested = counts["survived"], counts["no tests"]
        run = killed + survived
        total.update(killed=killed, survived=survived, untested=untested)
        if run or untested:
            print(f"| {mod} | {run} | {killed} | {survived} | {untested} | {100 * killed / run:.1f}% |" if run else
                  f"| {mod} | 0 | 0 | 0 | {untested} | - |")
    run = total["killed"] + total["survived"]
    if run:
        print(f"| **all** | {run} | {total['killed']} | {total['survived']} | {total['untested']} | "
              f"**{100 * total['killed'] / run:.1f}%** |")
    print("\nSurviving mutants (`mutmut show NAME` prints the change):\n")
    for name, verdict in sorted(status.items()):
        if verdict == "survived":
            print(f"- `{name}`")


if __name__ == "__main__":
    main()
