"""Optimizer state: its exact size in bytes, and a checkpoint that restores it exactly.

`state_bytes` sums every state tensor (what the run summary reports per param group); under FSDP2
(`trainer=fsdp2`) the bytes this rank holds: a DTensor counts its local rows. `fsdp2_state_bytes`
gives rank 0's figure from the same optimizer on whole parameters (`lrlab estimate`, before a run):
a tensor shaped like its parameter (Adam's moments) and the projected state that follows the
gradient's rows (`sharded.ROW_SHARDED`) count rank 0's rows, ⌈m/W⌉ of m (FSDP2's torch.chunk
blocks); the rest is replicated.

`torch.optim.Optimizer.load_state_dict` casts every state tensor but `step` to its parameter's
dtype: integer indices (DCT frequencies, LIFT's selected entries) come back as floats, and fp32
moments of a bf16 weight are rounded through bf16. Optimizers holding such state call
`restore_saved_dtypes` after torch's load: every state tensor goes back to the dtype it was saved
in, on its parameter's device.
"""

import math

import torch
from torch.distributed.tensor import DTensor

from lrlab.optim.sharded import row_sharded_keys


def restore_saved_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for saved_id, p in zip(saved_ids, params):
        for key, value in state_dict["state"].get(saved_id, {}).items():
            if torch.is_tensor(value):
                optimizer.state[p][key] = value.to(device=p.device)


def state_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, list[int]]:
    """Exact optimizer-state bytes this process holds: total and per param group."""
    by_group = []
    for group in optimizer.param_groups:
        n = 0
        for p in group["params"]:
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value):
                    value = value.to_local() if isinstance(value, DTensor) else value
                    n += value.numel() * value.element_size()
        by_group.append(n)
    return sum(by_group), by_group


def fsdp2_state_bytes(optimizer: torch.optim.Optimizer, processes: int) -> int:
    """The bytes rank 0 holds when FSDP2 shards the (here whole) parameters over `processes`."""
    total = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            rows = row_sharded_keys(p.shape, group["proj_type"]) if "rank" in group else ()
            for key, value in optimizer.state.get(p, {}).items():
                if not torch.is_tensor(value):
                    continue
                size = value.numel() * value.element_size()
                if value.dim() and (key in rows or value.shape == p.shape):
                    length = value.shape[0]
                    size = size // length * min(length, math.ceil(length / processes))
                total += size
    return total
