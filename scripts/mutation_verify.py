"""Check that new tests kill given mutants, without a new mutmut run: each mutant is applied to
src/, the named tests run, and src/ is restored from git.

Input: a file of lines `MUTANT_NAME TEST_NODE_ID [TEST_NODE_ID ...]`. Prints `killed` or
`SURVIVED` per mutant; exits 1 if any survived. Refuses to start when src/ has uncommitted changes.

The mutant is applied from mutmut's copy (`mutants/`, written by `mutmut run`): the mutated copy
of the function replaces the function it was made from, found by its class and name. (`mutmut
apply` 3.8.1 finds a method by its name alone, so in a file where two classes define `__init__`
it may change the wrong one.)
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

NAME = re.compile(r"^(?P<module>[\w.]+?)\.x(?:ǁ(?P<cls>\w+)ǁ(?P<method>\w+)|_(?P<func>\w+))__mutmut_\d+$")


def _function(tree: ast.Module, cls: str | None, name: str) -> ast.FunctionDef:
    scope = tree.body if cls is None else next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    return next(n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name)


def apply(mutant: str) -> Path:
    """Write the mutant into src/; returns the file it changed."""
    parts = NAME.match(mutant)
    if parts is None:
        raise ValueError(f"not a mutant name: {mutant}")
    rel = Path(*parts["module"].split(".")).with_suffix(".py")
    cls, name = parts["cls"], parts["method"] or parts["func"]
    mutated_source = (Path("mutants/src") / rel).read_text()
    mutated = _function(ast.parse(mutated_source), cls, mutant.rsplit(".", 1)[1])
    lines = mutated_source.splitlines()[mutated.lineno - 1:mutated.end_lineno]
    lines[0] = lines[0].replace(mutant.rsplit(".", 1)[1], name, 1)
    path = Path("src") / rel
    source = path.read_text().splitlines()
    original = _function(ast.parse(path.read_text()), cls, name)
    path.write_text("\n".join(source[:original.lineno - 1] + lines + source[original.end_lineno:]) + "\n")
    return path


def main(path: str) -> int:
    if subprocess.run(["git", "diff", "--quiet", "--", "src"]).returncode:
        sys.exit("src/ has uncommitted changes; commit or stash them first")
    survived = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for line in open(path).read().splitlines():
        if not line.strip():
            continue
        name, *tests = line.split()
        try:
            apply(name)
            failed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                    env=env, capture_output=True).returncode != 0
        finally:
            subprocess.run(["git", "checkout", "--quiet", "--", "src"], check=True)
        survived += not failed
        print(f"{'killed  ' if failed else 'SURVIVED'} {name}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
