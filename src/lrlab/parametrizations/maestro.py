"""Maestro: trainable low-rank ordered decomposition (Horváth et al., ICML 2024, "Maestro: Uncovering
Low-Rank Structures via Trainable Decomposition", arXiv 2308.14929; official code
github.com/SamuelHorvath/Maestro-LoD, `maestro/layers/linear.py`, `maestro/samplers/`,
`cifar_mnist_main.py`, read there).

Each targeted layer becomes W = B·A with the full inner width k = min(m, n), initialised from the
SVD of its initial weight (B = U√Σ, A = √Σ·Vᵀ: the function is unchanged; official
`decompose_linear`; a convolution: A is the kh×kw convolution, B the 1×1, as `MaestroConv2d`).
- Ordered dropout: in each training step only the first j active components of a layer are used
  (a prefix of the inner dimension). `sampler: per_layer` (the official default, "one layer at a
  time") truncates one layer per step, the pair (layer, j) drawn uniformly over all layers' active
  widths; `across_layers` draws a j for every layer each step; `none` trains the full width. The
  official sampler walks shuffled passes over all pairs; here each step draws independently from a
  generator seeded by (`seed`, step), so a resumed run draws what the uninterrupted one would. As in
  the official scripts (`--no-full-pass`), the step's loss is that of the truncated network alone.
- Hierarchical group lasso (`loss_term`): λ·Σ_layers Σ_i (‖A_{i:}‖ + ‖B_{:,i:}‖), where A_{i:} are
  A's rows i … k−1 and B_{:,i:} B's columns i … k−1 (norms over the tail, so trailing components
  are pushed to zero first). λ = `group_lasso` (official scripts: 1e-6; option default 5e-3).
- Progressive shrinking: component i stays active while its importance ‖A_{i:}‖·‖B_{:,i:}‖ ≥
  `threshold` (official default 1e-5), re-assessed at each epoch's end as in the official loop
  (`prune_every` > 0: every that many steps instead). Inactive components are masked, not removed
  (they keep their parameters, as the official code does during training); `trained_entries`
  counts only the active ones, and `export` (or `lrlab compress`) leaves the product of the active
  ones.
The masks and the step's sampled width are buffers of the layers, so they are checkpointed.
"""

import torch
import torch.nn.functional as F
from torch import nn

from lrlab.errors import require
from lrlab.parametrizations.base import DEFAULT_EXCLUDE, Factorized, Parametrization

SAMPLERS = ("per_layer", "across_layers", "none")


class OrderedLayer(Factorized):
    def __init__(self, layer: nn.Module):
        super().__init__(layer, min(layer.weight.shape[0], layer.weight[0].numel()), 1.0, init="svd")
        self.register_buffer("active", torch.ones(self.rank, dtype=torch.bool))
        self.register_buffer("width", torch.zeros((), dtype=torch.long))  # 0: the full active width
        self.active_count = self.rank  # `active.sum()` kept on the host: the sampler reads it every step

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.active_count = int(self.active.sum())

    def mask(self, ordered_dropout: bool) -> torch.Tensor:
        keep = self.active
        if ordered_dropout:
            limit = torch.where(self.width > 0, self.width, self.rank)
            keep = keep & (keep.cumsum(0) <= limit)
        return keep.to(self.B.dtype)

    def matrix(self) -> torch.Tensor:
        return (self.B * self.mask(False)) @ self.A

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.A) * self.mask(self.training), self.B, self.bias)

    def conv2d(self, x: torch.Tensor) -> torch.Tensor:
        inner = self.convolve(x, self.A, None) * self.mask(self.training)[:, None, None]
        y = F.conv2d(inner, self.B[:, :, None, None])
        return y if self.bias is None else y + self.bias[:, None, None]

    def tail_norms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(‖A_{i:}‖, ‖B_{:,i:}‖) for every component i (official `_compute_lasso(hierarchical=True)`)."""
        rows = self.A.pow(2).sum(1).flip(0).cumsum(0).flip(0).sqrt()
        columns = self.B.pow(2).sum(0).flip(0).cumsum(0).flip(0).sqrt()
        return rows, columns

    @torch.no_grad()
    def shrink(self, threshold: float) -> None:
        rows, columns = self.tail_norms()
        self.active.copy_(rows * columns >= threshold)


class Maestro(Parametrization):
    shardable = False  # FSDP2: transposed (non-contiguous) factors FSDP2 cannot shard
    def __init__(self, sampler: str = "per_layer", group_lasso: float = 5e-3, threshold: float = 1e-5,
                 prune_every: int = 0, seed: int = 0, target_modules=None, exclude=DEFAULT_EXCLUDE):
        super().__init__(target_modules, exclude)
        require(sampler in SAMPLERS, "parametrization.sampler", sampler, f"one of {', '.join(SAMPLERS)}")
        require(group_lasso >= 0, "parametrization.group_lasso", group_lasso, "a number >= 0")
        require(threshold >= 0, "parametrization.threshold", threshold, "a number >= 0")
        require(isinstance(prune_every, int) and prune_every >= 0, "parametrization.prune_every", prune_every,
                "an integer >= 0 (0: at each epoch's end)")
        self.sampler, self.group_lasso, self.threshold = sampler, float(group_lasso), float(threshold)
        self.prune_every, self.seed = prune_every, int(seed)

    def rewrite(self, name: str, layer: nn.Module) -> nn.Module:
        return OrderedLayer(layer)

    def transform_model(self, model: nn.Module) -> nn.Module:
        model = super().transform_model(model)
        self.sample(model, step=0)
        return model

    def sample(self, model: nn.Module, step: int) -> None:
        """Set each layer's width for training step `step`."""
        layers = [layer for _, layer in self.layers(model, OrderedLayer)]
        widths = [layer.active_count for layer in layers]
        draws = [0] * len(layers)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        if self.sampler == "per_layer" and sum(widths):
            pick = int(torch.randint(sum(widths), (), generator=generator))
            for i, width in enumerate(widths):
                if pick < width:
                    draws[i] = pick + 1
                    break
                pick -= width
        elif self.sampler == "across_layers":
            draws = [int(torch.randint(1, w + 1, (), generator=generator)) if w else 0 for w in widths]
        for layer, width in zip(layers, draws):
            layer.width.fill_(width)

    def shrink(self, model: nn.Module) -> None:
        layers = [layer for _, layer in self.layers(model, OrderedLayer)]
        for layer in layers:
            layer.shrink(self.threshold)
        counts = torch.stack([layer.active.sum() for layer in layers]).tolist() if layers else []  # one host read
        for layer, count in zip(layers, counts):
            layer.active_count = count

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor | None:
        if self.group_lasso == 0:
            return None
        total = sum((rows + columns).sum() for rows, columns in
                    (layer.tail_norms() for _, layer in self.layers(task.model, OrderedLayer)))
        return self.group_lasso * total

    def after_step(self, task, step: int) -> None:
        if self.prune_every and (step + 1) % self.prune_every == 0:
            self.shrink(task.model)
        self.sample(task.model, step + 1)

    def on_train_epoch_end(self, task) -> None:
        if not self.prune_every:
            self.shrink(task.model)

    def trained_entries(self, model: nn.Module) -> dict[str, int]:
        entries = {}
        for name, layer in self.layers(model, OrderedLayer):
            active = int(layer.active.sum())
            entries[f"{name}.A"] = active * layer.in_features
            entries[f"{name}.B"] = layer.out_features * active
        return entries
