"""Several jobs on one machine, each with its share of the cores.

torch starts one compute thread per core in every process: N jobs on N cores then run N² threads
and the total throughput collapses (two `lrlab train` jobs on 2 cores: 0.16× of one job alone,
measured; with one thread each: 1.16×). Wherever lrlab runs jobs side by side — the `parallel`
launcher preset (`hydra/launcher=parallel`), `lrlab sweep sweep.n_jobs=N`, `lrlab smoke` — each
job gets `share(N)` = cores // N threads through
`use_threads`; the `threads` key sets it for any single run. `scripts/bench_parallel.py`
measures the total throughput of N jobs against one.
"""

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cores() -> int:
    """The cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def share(jobs: int, total: int | None = None) -> int:
    """Threads for each of `jobs` jobs running at once on `total` cores (default: this machine's)."""
    return max(1, (total or cores()) // max(1, jobs))


def use_threads(threads: int) -> None:
    """Limit this process to `threads` compute threads (torch now, OpenMP/BLAS in children)."""
    import torch

    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    torch.set_num_threads(threads)


def joblib_jobs(n_jobs: int) -> int:
    """How many jobs joblib runs at once for its `n_jobs` (-1: one per core, -2: all but one, ...)."""
    return n_jobs if n_jobs > 0 else max(1, cores() + 1 + n_jobs)


def _die_with_parent() -> None:
    """A worker stops when the process that started it is killed (kill -9 included), so a killed
    sweep or grid leaves no job writing into a run dir that its rerun continues."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start_worker(threads: int) -> None:
    _die_with_parent()
    use_threads(threads)
    from lrlab.console import quiet_libraries

    quiet_libraries()


def worker_pool(jobs: int, threads: int | None = None) -> ProcessPoolExecutor:
    """`jobs` fresh worker processes (spawned: no state inherited from this one), each limited to
    `threads` compute threads (default: its share of the cores)."""
    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_start_worker,
                               initargs=(threads or share(jobs),))
