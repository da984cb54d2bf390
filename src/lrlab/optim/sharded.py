"""The projected step of a weight that FSDP2 shards by rows (`trainer=fsdp2`).

FSDP2 (`fully_shard`) holds each weight W (m×n) as a DTensor sharded by rows (dim 0, torch.chunk
blocks) over W ranks, and hands the optimizer each rank's rows G_i of the gradient
(reduce-scattered). The step of `lowrank_adam.py` is taken on those rows, with the state that
follows G's rows sharded the same way and the rest replicated:

- right projection (GaLore's side when m ≥ n; Q r×n replicated): R_i = G_i·Qᵀ, the low-rank
  moments are rows too (m_i×r), N_i·Q is local. No communication between refreshes.
- left projection (m < n; P m×r): each rank holds P's rows P_i matching its rows of G.
  R = Σ_i P_iᵀ·G_i, one all-reduce of r×n; the moments (r×n) are replicated, identical on every
  rank; back-projection P_i·N is local. `full` (Pᵀ·G·Qᵀ): one all-reduce of r×r.
- refresh (every T steps): G is all-gathered once, the basis is computed from it on every rank
  (the same SVD, eigh, sketch or DCT scores everywhere), and a rank keeps its rows of P (DCT keeps
  the r indices, replicated). `rotate` maps the moments by Pₙᵀ·Pₒ = Σ_i Pₙ,ᵢᵀ·Pₒ,ᵢ: one more
  all-reduce of r×r.
- Fira: its per-row scales ‖N_j‖/‖R_j‖ are local to the rows (right side) or computed from the
  replicated r×n moments (left side: per column); the norm of the scaled residual, which the
  norm-growth limiter compares with the last step's, sums over all rows: one all-reduce of a
  scalar (right side) or of n column norms (left side). The residual G_i − α·back(R)_i, FRUGAL's
  signSGD on it, and the update are local.

Values each rank hands to collectives per projected weight (fp32):

| side | between refreshes | at a refresh |
|---|---|---|
| right (m ≥ n), GaLore/DCT/FRUGAL | 0 | m·n (the gather) |
| right, Fira | 1 | m·n + 1 |
| left (m < n), GaLore/DCT/FRUGAL | r·n (all-reduce) | m·n + r·n (+ r·r with `rotate`) |
| left, Fira | r·n + n | m·n + r·n + n |

(an all-reduce of k values moves about 2·(W−1)/W·k per rank, an all-gather of G (W−1)/W·m·n).
No rule of the step needs G whole between refreshes, so G is gathered only for the refresh;
measured against gathering it at every step: docs/scale.md.

State per rank: the row-sharded tensors (P, or the right side's moments) are stored as DTensors
with the weight's placement, so the checkpoint (`get_optimizer_state_dict(full_state_dict=True)`)
gathers them whole and a resume distributes them back by rows; replicated state (Q, DCT indices,
the left side's moments, Fira's last norm) is stored whole. `ROW_SHARDED` names which is which,
for `state.fsdp2_state_bytes` (`lrlab estimate`). Per rank: right side 2·⌈m/W⌉·r + r·n values, left
side ⌈m/W⌉·r + 2·r·n (a DCT basis is r int64 indices instead of Q or P). The step's full-size temporaries
are the rank's rows (⌈m/W⌉×n), except the gathered G at a refresh.
"""

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from lrlab.optim.projector import resolve_side

# The projected state tensors whose rows are the weight's rows, by projection side.
ROW_SHARDED = {"right": ("exp_avg", "exp_avg_sq"), "left": ("proj_left",), "full": ("proj_left",)}


def is_sharded(p: torch.Tensor) -> bool:
    return isinstance(p, DTensor)


def local_rows(p: DTensor) -> slice:
    """This rank's rows of `p` in the global matrix (FSDP2's dim-0 chunks)."""
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    return slice(offset[0], offset[0] + shape[0])


def row_sharded_keys(shape: torch.Size, proj_type: str) -> tuple[str, ...]:
    return ROW_SHARDED[resolve_side(shape, proj_type)]


class Whole:
    """One process holds every row: the sums over rows are plain reductions."""

    def __init__(self, shape: torch.Size):
        self.shape, self.rows = shape, slice(None)

    def gather(self, grad: torch.Tensor) -> torch.Tensor:
        return grad

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        return partial

    def column_norms(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.norm(dim=0)

    def norm(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.norm()


class RowShard(Whole):
    """This rank holds the rows `rows` of a weight sharded by FSDP2: sums over rows all-reduce."""

    def __init__(self, p: DTensor):
        super().__init__(p.shape)
        self.param, self.rows, self.group = p, local_rows(p), p.device_mesh.get_group()

    def gather(self, grad: torch.Tensor) -> torch.Tensor:
        return self.param.grad.full_tensor().float()

    def sum(self, partial: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(partial, group=self.group)
        return partial

    def column_norms(self, rows: torch.Tensor) -> torch.Tensor:
        return self.sum(rows.norm(dim=0).square_()).sqrt_()

    def norm(self, rows: torch.Tensor) -> torch.Tensor:
        return self.sum(rows.norm().square()).sqrt_()


def sharded_step(p: DTensor, state: dict, group: dict, update) -> None:
    """Run `update(target, grad, state, group, rows)` (the rule, adding the step into `target`) on
    this rank's rows of the weight and gradient, with the row-sharded state as its local rows."""
    local = {key: value.to_local() if isinstance(value, DTensor) else value for key, value in state.items()}
    update(p.to_local(), p.grad.to_local().float(), local, group, RowShard(p))
    sharded_keys = row_sharded_keys(p.shape, group["proj_type"])
    state.clear()
    for key, value in local.items():
        if key in sharded_keys:
            value = DTensor.from_local(value, p.device_mesh, p.placements, shape=(p.shape[0], value.shape[1]),
                                       stride=(value.shape[1], 1))
        state[key] = value
