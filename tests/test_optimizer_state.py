"""Every optimizer config's state across save/load, dtypes and host synchronisation.

Each config is built from its YAML (conf/optimizer) as the runner builds it. Resume: N steps,
then the state dict through `torch.save`/`torch.load(weights_only=True)` into a new optimizer,
then N more steps, equals 2N steps straight, bit for bit, with a refresh period T = 3 < N = 4 so
that the split falls between refreshes (at 3 and 6) with a basis, a FRUGAL block selection or a
re-warm live across it.
"""

import functools
import io

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from lrlab.optim.projector import BASES
from lrlab.probes import HostSyncs
from lrlab.train import compose
from conftest import TwoLayer

N, GAP = 4, 3
LOW_RANK = ["optimizer.rank=4", f"optimizer.update_proj_gap={GAP}"]
CONFIGS = {
    "adamw": ["optimizer=adamw"],
    "sgd": ["optimizer=sgd"],
    "orthograd": ["optimizer=orthograd"],
    **{f"galore_{basis}": ["optimizer=galore", f"optimizer.basis={basis}", *LOW_RANK] for basis in BASES},
    "galore_rotate": ["optimizer=galore", "optimizer.on_refresh=rotate", *LOW_RANK],
    "fira": ["optimizer=fira", *LOW_RANK],
    "dct": ["optimizer=dct", *LOW_RANK],
    "dct_makhoul_rotate_abs": ["optimizer=dct", "optimizer.dct_variant=makhoul", "optimizer.on_refresh=rotate_abs",
                               *LOW_RANK],
    "frugal": ["optimizer=frugal", "optimizer.density=0.5", f"optimizer.update_proj_gap={GAP}"],
    "frugal_svd": ["optimizer=frugal_svd", *LOW_RANK],
    "lowrank_reset": ["optimizer=lowrank_reset", *LOW_RANK],
}


@functools.cache
def optimizer_config(config: str):
    node = OmegaConf.to_container(compose(CONFIGS[config]).optimizer)
    node.pop("layerwise")  # how the task steps it, not a builder argument
    return node


def build(config: str, model: nn.Module) -> torch.optim.Optimizer:
    return instantiate(optimizer_config(config), _partial_=True, _convert_="all")(model)


def gradients(model: nn.Module, steps: int) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [[torch.randn(p.shape, generator=gen).to(p.dtype) for p in model.parameters()] for _ in range(steps)]


def train(opt, model, grads) -> None:
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g.clone()
        opt.step()


def through_disk(state_dict: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def twin_models(dtype: torch.dtype) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    a, b = TwoLayer().to(dtype), TwoLayer().to(dtype)
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_resume_between_refreshes_equals_straight(config, dtype):
    straight_model, resumed_model = twin_models(dtype)
    grads = gradients(straight_model, 2 * N)
    train(build(config, straight_model), straight_model, grads)
    first = build(config, resumed_model)
    train(first, resumed_model, grads[:N])
    second = build(config, resumed_model)
    second.load_state_dict(through_disk(first.state_dict()))
    train(second, resumed_model, grads[N:])
    for a, b in zip(straight_model.parameters(), resumed_model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_state_loads_back_bit_for_bit_with_its_dtypes(config):
    """bf16 weights: fp32 moments and bases, int64 DCT indices and ints come back exactly as saved
    (torch's own load would cast every state tensor to the parameter's dtype)."""
    model, _ = twin_models(torch.bfloat16)
    opt = build(config, model)
    train(opt, model, gradients(model, N))
    again = build(config, model)
    again.load_state_dict(through_disk(opt.state_dict()))
    for p in model.parameters():
        saved, loaded = opt.state[p], again.state[p]
        assert saved.keys() == loaded.keys()
        for key, value in saved.items():
            if torch.is_tensor(value):
                assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key
            else:
                assert type(loaded[key]) is type(value) and loaded[key] == value, key


def test_host_sync_counter_sees_the_syncs_it_names():
    t = torch.ones(())
    with HostSyncs() as syncs:
        float(t), t.item(), bool(t), torch.tensor(1.0)
        torch.full((), 2.0) + t
    assert syncs.calls == ["__float__", "item", "__bool__", "tensor"]


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_the_step_makes_no_host_sync(config):
    """Over 2T steps with refreshes and resets (the DCT refresh included; SVD/eigh/QR refreshes check
    their result on the host inside torch.linalg, which this counter does not see)."""
    model, _ = twin_models(torch.float32)
    opt = build(config, model)
    with HostSyncs() as syncs:
        train(opt, model, gradients(model, 2 * GAP))
    assert syncs.calls == []
