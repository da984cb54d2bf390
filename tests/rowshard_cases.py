"""The row-sharded projected step (`lrlab/optim/sharded.py`) on 2 ranks, against one process.

`python -m torch.distributed.run --nproc_per_node=2 tests/rowshard_cases.py OUT` builds, for each
case in CASES, two bias-free linear layers (13×8: right projection, 13 rows split 7/6 over the
ranks; 10×24: left projection), shards them with FSDP2's `fully_shard` (gloo, CPU), and gives
them the gradients `gradients(step)` (each rank its rows). It saves, on rank 0, the weights after
STEPS steps, the optimizer state as a checkpoint holds it (`get_optimizer_state_dict` with
`full_state_dict`), the weights of a run resumed from the checkpoint of step RESUME_AT, and which
state tensors the resumed optimizer held sharded. The test runs the same steps in one process.
"""

import sys
from pathlib import Path

import torch

SHAPES = ((13, 8), (10, 24))
RANK, GAP, STEPS, RESUME_AT = 4, 2, 5, 3  # refreshes at steps 0, 2, 4: the resume falls between
CASES = {
    "galore": {},
    "galore_randomized": {"basis": "randomized"},
    "galore_full": {"proj_type": "full"},
    "galore_rotate": {"on_refresh": "rotate"},
    "galore_reset": {"on_refresh": "reset_projected"},
    "fira": {"residual": "fira"},
    "fira_paper": {"residual": "fira_paper"},
    "frugal_svd": {"residual": "frugal"},
    "dct": {"basis": "dct"},
    "dct_makhoul_rotate_abs": {"basis": "dct", "dct_variant": "makhoul", "on_refresh": "rotate_abs"},
}


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(n, m, bias=False) for m, n in SHAPES))


def gradients(step: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return [torch.randn(m, n, generator=generator) for m, n in SHAPES]


def optimizer(net: torch.nn.Module, case: str):
    from lrlab.optim.lowrank_adam import LowRankAdamW

    group = {"params": list(net.parameters()), "rank": RANK, "update_proj_gap": GAP, **CASES[case]}
    return LowRankAdamW([group], lr=0.01, weight_decay=0.1)


def take_steps(net, opt, steps: range) -> None:
    from torch.distributed.tensor import DTensor

    for step in steps:
        for p, grad in zip(net.parameters(), gradients(step)):
            p.grad = (DTensor.from_local(grad.chunk(p.device_mesh.size())[p.device_mesh.get_local_rank()],
                                         p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
                      if isinstance(p, DTensor) else grad)
        opt.step()


def sharded_model(case: str):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    net = fully_shard(model(), mesh=init_device_mesh("cpu", (2,)))
    return net, optimizer(net, case)


def run_case(case: str) -> dict:
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict, set_model_state_dict,
                                                         set_optimizer_state_dict)
    from torch.distributed.tensor import DTensor

    full = StateDictOptions(full_state_dict=True)
    net, opt = sharded_model(case)
    take_steps(net, opt, range(STEPS))
    weights = [p.full_tensor() for p in net.parameters()]
    state = get_optimizer_state_dict(net, opt, options=full)

    net, opt = sharded_model(case)
    take_steps(net, opt, range(RESUME_AT))
    model_ckpt, optim_ckpt = get_model_state_dict(net, options=full), get_optimizer_state_dict(net, opt, options=full)
    net, opt = sharded_model(case)
    set_model_state_dict(net, model_ckpt, options=full)
    set_optimizer_state_dict(net, opt, optim_ckpt, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    held = {index: sorted(key for key, value in opt.state[p].items() if isinstance(value, DTensor))
            for index, p in enumerate(net.parameters())}
    take_steps(net, opt, range(RESUME_AT, STEPS))
    resumed = [p.full_tensor() for p in net.parameters()]
    return {"weights": weights, "state": state, "resumed": resumed, "sharded_keys": held}


def main(out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    results = {case: run_case(case) for case in CASES}
    if dist.get_rank() == 0:
        torch.save(results, Path(out) / "rowshard.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
