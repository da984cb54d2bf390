"""Collectives for methods whose state is not a parameter, under data parallelism.

Each rank sees only its share of the global batch. Parameters stay in step through the
gradient all-reduce, but per-sample buffers (ELR's targets, PS-KD's predictions) and statistics
taken from a rank-local gradient (IncreLoRA's importance) would not: each rank would hold only
its own rows, and rank 0 alone is checkpointed. These helpers make them the single-process
values. Outside a process group (or with one process) they return their input unchanged.
"""

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(index: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, rows) of every rank, concatenated in rank order: the rows each rank wrote into a
    per-sample buffer this step, so that every rank can write all of them. Costs one all-gather
    of the batch's rows (batch × row size values) per call."""
    if world_size() == 1:
        return index, rows
    counts = [torch.zeros(1, dtype=torch.long, device=index.device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([index.numel()], device=index.device))
    largest = int(max(c.item() for c in counts))
    pad = largest - index.numel()
    padded_index = torch.cat([index, index.new_zeros(pad)])
    padded_rows = torch.cat([rows, rows.new_zeros(pad, *rows.shape[1:])])
    indices = [torch.empty_like(padded_index) for _ in counts]
    values = [torch.empty_like(padded_rows) for _ in counts]
    dist.all_gather(indices, padded_index)
    dist.all_gather(values, padded_rows)
    keep = [int(c.item()) for c in counts]
    return (torch.cat([i[:k] for i, k in zip(indices, keep)]), torch.cat([v[:k] for v, k in zip(values, keep)]))


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over ranks (in place): a rank-local gradient statistic becomes the
    one of the global batch, as the gradient all-reduce does for the gradients."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(world_size())
    return tensor


def on_any_rank(names: list[str]) -> list[str]:
    """The names found on any rank, rank 0's first (one all-gather of every rank's list)."""
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, names)
    return list(dict.fromkeys(name for found in gathered for name in found))
