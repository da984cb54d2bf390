"""Sparse Spectral Training (Zhao et al., ICML 2025, "Sparse Spectral Training and Inference on Euclidean
and Hyperbolic Neural Networks", arXiv 2405.15481).

Each targeted weight is kept in spectral form W = U·diag(σ)·Vᵀ (U m×k, V n×k, k = min(m, n)),
initialised from the SVD of the layer's initial weight (the function is unchanged). Every step all k
singular values σ train; of the singular vectors only r (= `rank`) train, sampled without replacement
with probability ∝ |σ| at the start of each round of `resample_every` steps. The sampled columns live
in the trainable `u_active` (m×r), `v_active` (n×r); the others stay in the frozen `u`, `v`, so the
optimizer holds state for (m+n)·r + k entries per weight. At a round's end the trained columns are
written back, and every `resvd_every` steps (a multiple of `resample_every`; 0: never) W is
re-decomposed by SVD, which restores orthonormal U, V and leaves the function unchanged. The
optimizer state of the re-sampled vectors (and of σ after a re-SVD) is cleared: it belongs to the
columns they replaced.

Gradients (`enhanced_gradient`, the paper's §4.2): for the sampled term u·diag(σ)·vᵀ the vectors get
∂L/∂u = G·v and ∂L/∂v = Gᵀ·u (the default gradient carries a factor σᵢ, which starves small
components); σ gets diag(uᵀ·G·v) as usual. `enhanced_gradient: false` uses the plain gradients.

What was read: the paper (abstract, section list, the description above); the official repository was
not available here, so the round length, the re-SVD period, |σ| for the sampling weights and the
optimizer-state clearing are our choices, exposed as options. Sampling draws from a generator seeded
by (`seed`, step), so a resumed run samples what the uninterrupted one would.
"""

import torch
from torch import nn

from lrlab.errors import require
from lrlab.parametrizations.base import DEFAULT_EXCLUDE, MatrixLayer, Parametrization, check_rank, \
    reset_optimizer_state


class EnhancedSpectral(torch.autograd.Function):
    """u·diag(σ)·vᵀ whose backward gives u the gradient G·v and v the gradient Gᵀ·u (no σ factor)."""

    @staticmethod
    def forward(ctx, u, sigma, v):
        ctx.save_for_backward(u, sigma, v)
        return (u * sigma) @ v.T

    @staticmethod
    def backward(ctx, grad):
        u, sigma, v = ctx.saved_tensors
        grad = grad.to(u.dtype)  # under autocast the forward's product (and so its gradient) is low precision
        grad_v_side = grad @ v
        return grad_v_side, (u * grad_v_side).sum(0), grad.T @ u


class SpectralLayer(MatrixLayer):
    def __init__(self, layer: nn.Module, rank: int, enhanced_gradient: bool):
        super().__init__(layer)
        k = min(self.out_features, self.in_features)
        u, s, vh = torch.linalg.svd(layer.weight.detach().reshape(self.out_features, -1).float(),
                                    full_matrices=False)
        self.u = nn.Parameter(u.to(**self.like), requires_grad=False)
        self.v = nn.Parameter(vh.T.contiguous().to(**self.like), requires_grad=False)
        self.sigma = nn.Parameter(s.to(**self.like))
        self.register_buffer("active", torch.arange(rank))
        self.u_active = nn.Parameter(self.u[:, :rank].clone())
        self.v_active = nn.Parameter(self.v[:, :rank].clone())
        self.enhanced, self.rank, self.k = enhanced_gradient, rank, k

    def matrix(self) -> torch.Tensor:
        frozen_sigma = self.sigma.index_fill(0, self.active, 0.0)
        sampled_sigma = self.sigma.index_select(0, self.active)
        spectral = EnhancedSpectral.apply if self.enhanced else lambda u, s, v: (u * s) @ v.T
        return (self.u * frozen_sigma) @ self.v.T + spectral(self.u_active, sampled_sigma, self.v_active)

    @torch.no_grad()
    def write_back(self) -> None:
        self.u[:, self.active] = self.u_active
        self.v[:, self.active] = self.v_active

    @torch.no_grad()
    def resvd(self) -> None:
        """W = UΣVᵀ afresh (the trained columns first written back); the function is unchanged."""
        self.write_back()
        u, s, vh = torch.linalg.svd(self.matrix().float(), full_matrices=False)
        self.u.copy_(u)
        self.v.copy_(vh.T)
        self.sigma.copy_(s)
        self.take(self.active)

    @torch.no_grad()
    def resample(self, generator: torch.Generator, spectrum: torch.Tensor | None = None) -> None:
        """Draw the trained vectors ∝ |σ|; `spectrum` is |σ| already on the host (`host_spectra`)."""
        if self.sigma.is_meta:  # built without data (`lrlab validate` of a large model): nothing to draw from
            return
        self.write_back()
        if spectrum is None:
            spectrum = self.sigma.detach().abs().float().cpu()
        weights = spectrum + torch.finfo(torch.float32).tiny
        self.take(torch.multinomial(weights, self.rank, replacement=False, generator=generator).sort().values)

    @torch.no_grad()
    def take(self, columns: torch.Tensor) -> None:
        self.active.copy_(columns)
        self.u_active.copy_(self.u[:, self.active])
        self.v_active.copy_(self.v[:, self.active])


def host_spectra(layers: list[SpectralLayer]) -> list[torch.Tensor | None]:
    """Every layer's |σ| on the host, read back at once (the draw uses the host generator)."""
    if not layers or any(layer.sigma.is_meta for layer in layers):
        return [None] * len(layers)
    spectra = torch.cat([layer.sigma.detach().abs().float() for layer in layers]).cpu()
    return list(spectra.split([layer.sigma.numel() for layer in layers]))


class SST(Parametrization):
    shardable = False  # FSDP2: whole-weight SVD and sampled singular vectors
    def __init__(self, rank: int = 128, resample_every: int = 200, resvd_every: int = 200,
                 enhanced_gradient: bool = True, seed: int = 0, target_modules=None, exclude=DEFAULT_EXCLUDE):
        super().__init__(target_modules, exclude)
        require(isinstance(resample_every, int) and resample_every >= 1, "parametrization.resample_every",
                resample_every, "an integer >= 1")
        require(isinstance(resvd_every, int) and resvd_every >= 0 and resvd_every % resample_every == 0,
                "parametrization.resvd_every", resvd_every, f"0 or a multiple of resample_every={resample_every}")
        self.rank, self.resample_every, self.resvd_every = rank, resample_every, resvd_every
        self.enhanced_gradient, self.seed = bool(enhanced_gradient), int(seed)

    def checked(self, targets):
        check_rank(targets, self.rank)
        return targets

    def rewrite(self, name: str, layer: nn.Module) -> nn.Module:
        return SpectralLayer(layer, self.rank, self.enhanced_gradient)

    def transform_model(self, model: nn.Module) -> nn.Module:
        model = super().transform_model(model)
        self.resample(model, step=-1)
        return model

    def resample(self, model: nn.Module, step: int) -> list[nn.Parameter]:
        """Draw the next round's vectors in every layer; returns the parameters whose state is stale."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step + 1)
        resvd = self.resvd_every > 0 and step >= 0 and (step + 1) % self.resvd_every == 0
        stale = []
        layers = [layer for _, layer in self.layers(model, SpectralLayer)]
        if resvd:
            for layer in layers:
                layer.resvd()
                stale.append(layer.sigma)
        for layer, spectrum in zip(layers, host_spectra(layers)):
            layer.resample(generator, spectrum)
            stale += [layer.u_active, layer.v_active]
        return stale

    def after_step(self, task, step: int) -> None:
        if (step + 1) % self.resample_every == 0:
            reset_optimizer_state(task, self.resample(task.model, step))
