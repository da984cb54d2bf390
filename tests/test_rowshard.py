"""The row-sharded projected step under FSDP2 (`lrlab/optim/sharded.py`) equals the
single-process step (`LowRankAdamW` on whole tensors, the oracle) on a right-projected weight
(13×8, rows split 7/6) and a left-projected one (10×24), through refreshes; its checkpoint holds
the whole P and moments, and a resume between refreshes restores them sharded, bit for bit.

Tolerances: ROUND_OFF (1e-6): the left side sums P_iᵀ·G_i over the ranks, a different order than
one Pᵀ·G (a few fp32 ulps); Adam's normalisation carries that through. Measured at most 2.9e-7
(the right side, all local, was equal bit for bit). The cases in SPECIAL state their reason.
"""

import os
import subprocess
import sys

import pytest
import torch

from rowshard_cases import CASES, STEPS, model, optimizer, take_steps

ROUND_OFF = 1e-6
SPECIAL = {
    # `full` projects to Pᵀ·G·Qᵀ (r×r), which at a refresh is diag(σ) in exact arithmetic: its
    # off-diagonal entries are round-off that Adam's m/(√v+ε) turns into steps of order lr.
    # Measured 2.6e-3; a missing all-reduce gives O(1).
    "galore_full": 1e-2,
    # DCT bases are columns of one orthonormal matrix: Pₙᵀ·Pₒ is a 0/1 selection in exact
    # arithmetic, its zeros round-off, which `rotate_abs` (|R·v|) makes into second moments of
    # round-off size that the normalisation divides by. Measured 1.2e-5.
    "dct_makhoul_rotate_abs": 1e-4,
}


def held_as_rows(case: str) -> dict[int, list[str]]:
    """The state each weight holds as row shards (DTensors): the right side's moments (`full`:
    its P), the left side's P (DCT: none, its r indices are replicated)."""
    config = CASES[case]
    right = ["proj_left"] if config.get("proj_type") == "full" else ["exp_avg", "exp_avg_sq"]
    left = [] if config.get("basis") == "dct" else ["proj_left"]
    return {0: right, 1: left}


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("rowshard")
    worker = os.path.join(os.path.dirname(__file__), "rowshard_cases.py")
    env = {**os.environ, "CI": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker, str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "rowshard.pt", weights_only=True)


def single_process(case: str):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank
    try:
        net = model()
        opt = optimizer(net, case)
        take_steps(net, opt, range(STEPS))
    finally:
        torch.set_num_threads(threads)
    return net, opt


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_row_sharded_step_equals_one_process(sharded_runs, case):
    run = sharded_runs[case]
    net, opt = single_process(case)
    start = list(model().parameters())
    for p, sharded, first in zip(net.parameters(), run["weights"], start):
        change = (p.detach() - first.detach()).norm()
        assert change > 0
        assert float((sharded - p.detach()).norm() / change) < SPECIAL.get(case, ROUND_OFF)
    saved = list(run["state"]["state"].values())
    for p, held in zip(net.parameters(), saved):  # the checkpoint holds every tensor whole
        for key, value in opt.state[p].items():
            if not torch.is_tensor(value):
                assert held[key] == value, key
            elif value.is_floating_point():
                assert held[key].shape == value.shape, key
                assert float((held[key] - value).norm()) <= ROUND_OFF * float(value.norm()) + 1e-30, key
            else:
                assert torch.equal(held[key], value), key  # DCT indices


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_row_sharded_resume_between_refreshes_is_bit_exact_and_sharded(sharded_runs, case):
    run = sharded_runs[case]
    assert all(torch.equal(a, b) for a, b in zip(run["resumed"], run["weights"]))
    assert run["sharded_keys"] == held_as_rows(case)
