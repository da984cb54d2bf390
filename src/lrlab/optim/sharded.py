"""The projected step of a weight that FSDP2 shards (`trainer=fsdp2`).

FSDP2 (`fully_shard`) holds each weight as a DTensor sharded by rows (dim 0) over the ranks, and
hands the optimizer each rank's rows of the gradient (reduce-scattered). A projection refresh
needs the whole gradient G (an SVD, or DCT column scores, over all rows), and so do Fira's
norm-growth limiter and row/column scales. The scheme chosen here is the simplest exact one:

    G = all-gather(rows of G)                    one all-gather of m·n values per weight and step
    Δ = the single-process update from G         on every rank, with the same (replicated) state
    rows of W ← rows of W + rows of Δ            local

so every rank holds the projector and the low-rank moments (r·n or m·r values: the state GaLore
keeps small) and the update is the single-process one. Communication per projected weight and
step: each rank receives (W−1)/W·m·n gradient values, as much again as FSDP2's reduce-scatter of
that gradient (a DDP all-reduce costs the same two halves). Memory: one full m×n fp32 gradient
and update at a time, beside the sharded weights; the redundant low-rank compute is r/min(m, n)
of a dense step's. A row-sharded projector (Pᵀ·G as local products plus one all-reduce of r×n,
gathering G only at refreshes) would send r/m as much between refreshes; it is not built.
"""

import torch
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset


def is_sharded(p: torch.Tensor) -> bool:
    return isinstance(p, DTensor)


def local_rows(p: DTensor) -> tuple[slice, ...]:
    """This rank's block of `p` in the global matrix (FSDP2's dim-0 chunks)."""
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return tuple(slice(start, start + size) for start, size in zip(offset, shape))


def sharded_step(p: DTensor, state: dict, group: dict, update) -> None:
    """Run `update(target, grad, state, group)` (the single-process rule, adding the step into
    `target`) on the gathered gradient and a zero full-size target, then add this rank's rows."""
    grad = p.grad.full_tensor().float()
    delta = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device)
    update(delta, grad, state, group)
    local = p.to_local()
    local.add_(delta[local_rows(p)].to(local.dtype))
