"""Step-for-step equivalence with the official packages: galore-torch 1.0 and fira 1.0.2.

fp32, m > n, m < n and square (m = n) weights on every projection side, 12 steps with a refresh
every 3 (four refreshes), weight decay on, a dense bias in the same optimizer: parameters agree to a
relative error ≤ 1e-5, and both moved away from their start by far more than that.
"""

import warnings

import pytest
import torch

from lrlab.optim.lowrank_adam import LowRankAdamW

fira = pytest.importorskip("fira")
galore_torch = pytest.importorskip("galore_torch")

SHAPES = [(48, 20), (20, 56), (24, 24)]
SHAPE_IDS = ["m>n", "m<n", "m=n"]
STEPS, GAP, RANK, SCALE = 12, 3, 6, 0.25


def run_pair(shape, ours_group: dict, reference_cls, reference_group: dict, proj_type="std"):
    torch.manual_seed(0)
    weight, bias = torch.randn(*shape), torch.randn(shape[0])
    ours_params = [torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())]
    ref_params = [torch.nn.Parameter(weight.clone()), torch.nn.Parameter(bias.clone())]
    common = {"rank": RANK, "update_proj_gap": GAP, "proj_type": proj_type}
    ours = LowRankAdamW([{"params": ours_params[:1], **common, **ours_group}, {"params": ours_params[1:]}],
                        lr=0.01, weight_decay=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = reference_cls([{"params": ref_params[:1], **common, **reference_group},
                                   {"params": ref_params[1:]}], lr=0.01, weight_decay=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        for p_ours, p_ref in zip(ours_params, ref_params):
            grad = torch.randn(p_ours.shape, generator=gen)
            p_ours.grad, p_ref.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
    return ours_params, ref_params


def start_of(shape) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(*shape), torch.randn(shape[0])]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("proj_type", ["std", "reverse_std", "left", "right", "full"])
def test_matches_galore_torch(shape, proj_type):
    ours, ref = run_pair(shape, {"scale": SCALE}, galore_torch.GaLoreAdamW, {"scale": SCALE}, proj_type)
    for a, b, start in zip(ours, ref, start_of(shape)):
        assert rel_err(a.data, b.data) <= 1e-5
        assert rel_err(a.data, start) > 1e-3  # the weights did move, so the agreement means something


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matches_fira(shape):
    ours, ref = run_pair(shape, {"scale": SCALE, "residual": "fira"}, fira.FiraAdamW, {"alpha": SCALE})
    for a, b, start in zip(ours, ref, start_of(shape)):
        assert rel_err(a.data, b.data) <= 1e-5
        assert rel_err(a.data, start) > 1e-3


def test_fira_differs_from_galore():
    """The residual term is live: Fira's parameters leave GaLore's trajectory."""
    fira_params, _ = run_pair(SHAPES[0], {"scale": SCALE, "residual": "fira"}, fira.FiraAdamW, {"alpha": SCALE})
    galore_params, _ = run_pair(SHAPES[0], {"scale": SCALE}, galore_torch.GaLoreAdamW, {"scale": SCALE})
    assert rel_err(fira_params[0].data, galore_params[0].data) > 1e-3
