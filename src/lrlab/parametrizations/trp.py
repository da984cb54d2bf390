"""Trained Rank Pruning (Xu et al., IJCAI 2020, "Trained Rank Pruning for Efficient Deep Neural
Networks", arXiv 2004.14566; official code github.com/yuhuixu1993/Trained-Rank-Pruning,
`cifar-TRP.py` `low_rank_approx` / `train`, `decompose.py` `EnergyThreshold`, read there).

The weights stay dense. Before the steps 0, p, 2p, … (p = `period`; official `--decouple-period`,
default 1) each targeted weight W (a convolution as out × in·kh·kw, the official "NC" scheme) is
decomposed, W = UΣVᵀ, and k is the smallest rank whose σ² keep `energy` (0.9) of Σσ²; with `project`
(official `--trp`) W is replaced by its rank-k truncation U_kΣ_kV_kᵀ. On those same steps the nuclear
norm's sub-gradient λ·U_kV_kᵀ (λ = `nuclear_weight`, official 3e-4; 0 turns it off) is added to the
gradient, here as the loss term λ·⟨W, U_kV_kᵀ⟩ (its gradient is exactly λ·U_kV_kᵀ, its value
λ·Σ_{i<k}σ_i).
The ranks k are a buffer of the method (checkpointed), since after a projection W's own spectrum no
longer tells k. The trained network is then compressed post hoc (`lrlab compress energy=E | rank=R`).

Differences: the official code targets ResNet's 3×3 convolutions except the first; here the shared
defaults apply (a classifier's body linears and convolutions, a language model's attention/MLP
linears), `target_modules` narrows them. Only the "NC" (channel) decomposition is implemented.
"""

import torch
from torch import nn

from lrlab.errors import require
from lrlab.parametrizations.base import DEFAULT_EXCLUDE, Parametrization, energy_rank_tensor, matrix_shape


class TRP(Parametrization):
    shardable = False  # FSDP2: a whole-weight SVD truncation in its hooks
    def __init__(self, energy: float = 0.9, period: int = 1, project: bool = True, nuclear_weight: float = 3e-4,
                 target_modules=None, exclude=DEFAULT_EXCLUDE):
        super().__init__(target_modules, exclude)
        require(0 < energy <= 1, "parametrization.energy", energy, "a fraction in (0, 1]")
        require(isinstance(period, int) and period >= 1, "parametrization.period", period, "an integer >= 1")
        require(nuclear_weight >= 0, "parametrization.nuclear_weight", nuclear_weight, "a number >= 0")
        self.energy, self.period, self.project = float(energy), period, bool(project)
        self.nuclear_weight = float(nuclear_weight)

    def transform_model(self, model: nn.Module) -> nn.Module:
        targets = self.targets(model)
        self.register_buffer("ranks", torch.zeros(len(targets), dtype=torch.long))
        self.truncate(model)  # the official loop decomposes before step 0 too
        return model

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.host_ranks = self.ranks.tolist()

    @torch.no_grad()
    def truncate(self, model: nn.Module) -> None:
        """Every layer's SVD, then its energy rank, read back for all layers at once."""
        layers = [layer for _, layer in self.targets(model)]
        factors = [torch.linalg.svd(layer.weight.reshape(matrix_shape(layer)).float(), full_matrices=False)
                   for layer in layers]
        ranks = torch.stack([energy_rank_tensor(s, self.energy) for _, s, _ in factors])
        self.ranks.copy_(ranks)
        self.host_ranks = ranks.tolist()  # the one host read of the truncation
        if self.project:
            for layer, (u, s, vh), k in zip(layers, factors, self.host_ranks):
                layer.weight.copy_(((u[:, :k] * s[:k]) @ vh[:k]).reshape(layer.weight.shape))

    def after_step(self, task, step: int) -> None:
        if (step + 1) % self.period == 0:
            self.truncate(task.model)

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor | None:
        if self.nuclear_weight == 0 or task.global_step % self.period:
            return None
        total = 0.0
        for (_, layer), k in zip(self.targets(task.model), self.host_ranks):
            weight = layer.weight.reshape(matrix_shape(layer))
            with torch.no_grad():
                u, _, vh = torch.linalg.svd(weight.float(), full_matrices=False)
                subgradient = (u[:, :k] @ vh[:k]).to(weight.dtype)
            total = total + (weight * subgradient).sum()
        return self.nuclear_weight * total
