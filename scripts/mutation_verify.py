"""Check that new tests kill given mutants, without a new mutmut run: each mutant is applied to
src/ (`mutmut apply`), the named tests run, and src/ is restored from git.

Input: a file of lines `MUTANT_NAME TEST_NODE_ID [TEST_NODE_ID ...]`. Prints `killed` or
`SURVIVED` per mutant; exits 1 if any survived. Refuses to start when src/ has uncommitted changes.
"""

import os
import subprocess
import sys


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
            subprocess.run([sys.executable, "-m", "mutmut", "apply", name], check=True, capture_output=True)
            failed = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                                    env=env, capture_output=True).returncode != 0
        finally:
            subprocess.run(["git", "checkout", "--quiet", "--", "src"], check=True)
        survived += not failed
        print(f"{'killed  ' if failed else 'SURVIVED'} {name}", flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
