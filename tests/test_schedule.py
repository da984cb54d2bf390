"""The lr schedule (`optim/schedule.py`): multiplier of the base lr at the first step, the end of
warm-up and the last step, for each kind; 100 steps, 10% warm-up (10 steps), floor 0.1."""

import pytest
import torch

from lrlab.optim import schedule

# step k is the k-th optimizer step (from 0); the warm-up is steps 0..9, step 99 is the last.
# cosine at 99: 0.1 + 0.9·½(1 + cos(π·89/90)) = 0.1 + 0.9·½(1 − 0.99939083) = 0.10027413
# linear at 99: 0.1 + 0.9·(1 − 89/90) = 0.11
EXPECTED = {
    "cosine": {0: 0.1, 9: 1.0, 10: 1.0, 99: 0.10027413},
    "linear": {0: 0.1, 9: 1.0, 10: 1.0, 55: 0.55, 99: 0.11},
    "constant": {0: 0.1, 9: 1.0, 10: 1.0, 99: 1.0},
}


def lrs(kind: str, total: int = 100, warmup_ratio: float = 0.1) -> list[float]:
    """The lr of every optimizer step, read from the optimizer the scheduler drives."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = schedule.build(opt, total, kind=kind, warmup_ratio=warmup_ratio, min_lr_ratio=0.1)
    values = []
    for _ in range(total):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_schedule_values(kind):
    values = lrs(kind)
    for step, expected in EXPECTED[kind].items():
        assert values[step] == pytest.approx(expected, abs=1e-8), step


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_no_warmup_starts_at_the_full_lr(kind):
    assert lrs(kind, warmup_ratio=0.0)[0] == 1.0
