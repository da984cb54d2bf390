"""What the weight parametrizations share: which layers they rewrite, the module that stands in for a
linear or 2-D convolution whose weight is an m×n matrix, the B·A factorisation, and the optimizer-state
reset.

Targets: `target_modules` names are matched as substrings of the module name (as the official
SLTrain, low-rank benchmark and GaLore scripts do), minus `exclude`; null takes the model's default:
the attention and MLP linears (`attn`, `mlp`) of a language model, every linear and convolution of a
classifier's feature `body` (its `head` stays dense, as TRP and PELA leave the final classifier).

A convolution's kernel out × in × kh × kw is the matrix out × (in·kh·kw) (TRP's "NC" reshape); m is
the output side, n the input side, for a linear as for a convolution.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from lrlab.errors import require
from lrlab.protocol import Method

LAYERS = (nn.Linear, nn.Conv2d)
LANGUAGE_MODEL_TARGETS = ("attn", "mlp")
DEFAULT_EXCLUDE = ("embed", "lm_head", "norm")


def select(model: nn.Module, target_modules=None, exclude=DEFAULT_EXCLUDE,
           key: str = "parametrization.target_modules") -> list[tuple[str, nn.Module]]:
    """(name, layer) of every linear / convolution the parametrization rewrites; refuses none."""
    body = getattr(model, "body", None)
    if target_modules is None and body is not None and not isinstance(model, PreTrainedModel):
        found = [(f"body.{name}", m) for name, m in body.named_modules() if isinstance(m, LAYERS)]
    else:
        patterns = list(target_modules or LANGUAGE_MODEL_TARGETS)
        found = [(name, m) for name, m in model.named_modules() if isinstance(m, LAYERS)
                 and any(p in name for p in patterns) and not any(x in name for x in exclude)]
    require(bool(found), key, target_modules, "match no linear or convolution of this model")
    for name, layer in found:
        require(isinstance(layer, nn.Linear) or (layer.groups == 1 and layer.padding_mode == "zeros"),
                key, target_modules, f"{name}: only convolutions with groups=1 and zero padding")
    return found


def matrix_shape(layer: nn.Module) -> tuple[int, int]:
    return layer.weight.shape[0], layer.weight[0].numel()


def energy_rank_tensor(singular_values: torch.Tensor, energy: float) -> torch.Tensor:
    """`energy_rank` as a tensor on the singular values' device (nothing is read back)."""
    squares = singular_values.double().pow(2)
    total = squares.sum()
    kept = torch.cumsum(squares, 0) / total
    threshold = torch.full((), energy, dtype=kept.dtype, device=kept.device) - 1e-12
    rank = (torch.searchsorted(kept, threshold) + 1).clamp(max=singular_values.numel())
    return torch.where(total == 0, 1, rank)


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest k whose σ₁² + … + σ_k² reach `energy` of Σσ² (TRP's `EnergyThreshold`)."""
    return int(energy_rank_tensor(singular_values, energy))


def check_rank(targets: list[tuple[str, nn.Module]], rank: int, key: str = "parametrization.rank") -> None:
    require(isinstance(rank, int) and rank >= 1, key, rank, "an integer >= 1")
    for name, layer in targets:
        smallest = min(matrix_shape(layer))
        require(rank <= smallest, key, rank, f"at most {smallest}, the smaller side of {name}'s weight")


class MatrixLayer(nn.Module):
    """A linear or 2-D convolution computed from the m×n matrix `matrix()`; the bias is the original
    layer's. Subclasses may override `linear` / `conv2d` with a faster path of the same function."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.out_features, self.in_features = matrix_shape(layer)
        self.kernel = None if isinstance(layer, nn.Linear) else {
            "shape": tuple(layer.weight.shape), "stride": layer.stride, "padding": layer.padding,
            "dilation": layer.dilation}
        if layer.bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = layer.bias
        self.like = {"device": layer.weight.device, "dtype": layer.weight.dtype}

    def matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if self.kernel is None else self.conv2d(x)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.matrix(), self.bias)

    def conv2d(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x, self.matrix(), self.bias)

    def convolve(self, x: torch.Tensor, matrix: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The convolution whose kernel is `matrix` (rows × in·kh·kw) with this layer's geometry."""
        k = self.kernel
        return F.conv2d(x, matrix.reshape(matrix.shape[0], -1, *k["shape"][2:]), bias, k["stride"], k["padding"],
                        k["dilation"])

    @torch.no_grad()
    def dense(self) -> nn.Module:
        """The plain nn.Linear / nn.Conv2d with this layer's weight and bias (export)."""
        matrix = self.matrix()
        like = {"device": matrix.device, "dtype": matrix.dtype}
        if self.kernel is None:
            plain = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, **like)
        else:
            k = self.kernel
            plain = nn.Conv2d(k["shape"][1], k["shape"][0], k["shape"][2:], k["stride"], k["padding"],
                              k["dilation"], bias=self.bias is not None, **like)
        plain.weight.copy_(matrix.reshape(plain.weight.shape))
        if self.bias is not None:
            plain.bias.copy_(self.bias)
        return plain


def kaiming_uniform(rows: int, cols: int, like: dict) -> torch.Tensor:
    """torch's default nn.Linear init (kaiming_uniform with a=√5): U(±1/√cols)."""
    bound = 1.0 / math.sqrt(cols)
    return torch.empty(rows, cols, **like).uniform_(-bound, bound)


def svd_factors(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B = U_r·√Σ_r, A = √Σ_r·V_rᵀ from the SVD of `matrix` (fp32), so B·A is its best rank-r fit."""
    u, s, vh = torch.linalg.svd(matrix.detach().float(), full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


class Factorized(MatrixLayer):
    """W = scale·B·A with B m×r and A r×n; the forward never forms W: y = scale·B(A x) + b (a
    convolution: the r-channel convolution A, then the 1×1 convolution B)."""

    def __init__(self, layer: nn.Module, rank: int, scale: float = 1.0, init: str = "kaiming"):
        super().__init__(layer)
        m, n = self.out_features, self.in_features
        if init == "svd":
            b, a = svd_factors(layer.weight.reshape(m, n), rank)
            b, a = b.to(**self.like), a.to(**self.like)
        else:
            b = torch.zeros(m, rank, **self.like) if init == "zeros_b" else kaiming_uniform(m, rank, self.like)
            a = kaiming_uniform(rank, n, self.like)
        self.B, self.A = nn.Parameter(b), nn.Parameter(a)
        self.rank, self.scale = rank, float(scale)

    def matrix(self) -> torch.Tensor:
        return self.scaled(self.B @ self.A)

    def scaled(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.scale == 1.0 else y * self.scale

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scaled(F.linear(F.linear(x, self.A), self.B))
        return y if self.bias is None else y + self.bias

    def conv2d(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scaled(F.conv2d(self.convolve(x, self.A, None), self.B[:, :, None, None]))
        return y if self.bias is None else y + self.bias[:, None, None]

    @torch.no_grad()
    def rebalance(self) -> None:
        """B = U√Σ, A = √Σ·Vᵀ for SVD(B·A) = UΣVᵀ (the benchmark's weight refactorization): same
        product, balanced factors. Computed from the QR factors B = Q_b R_b, Aᵀ = Q_a R_a and the SVD of
        the r×r matrix R_b·R_aᵀ, the same U, Σ, V as an SVD of the m×n product at O((m+n)·r²)."""
        q_b, r_b = torch.linalg.qr(self.B.float())
        q_a, r_a = torch.linalg.qr(self.A.float().T)
        u, s, vh = torch.linalg.svd(r_b @ r_a.T)
        root = s.sqrt()
        self.B.copy_((q_b @ u) * root)
        self.A.copy_(root[:, None] * (vh @ q_a.T))


def reset_optimizer_state(task, params=None) -> None:
    """Forget the optimizer's state (moments, step counts) of `params`, or of every parameter: the
    optimizer re-initialises it at the next step, as a freshly built optimizer would."""
    for optimizer in task.trainer.optimizers:
        if params is None:
            optimizer.state.clear()
        else:
            for p in params:
                optimizer.state.pop(p, None)


class Parametrization(Method):
    """Targets and export shared by the parametrizations: `rewrite(name, layer)` returns the module that
    replaces each targeted layer; `export` densifies every `MatrixLayer` back into nn.Linear / nn.Conv2d."""

    def __init__(self, target_modules=None, exclude=DEFAULT_EXCLUDE):
        super().__init__()
        self.target_modules = None if target_modules is None else list(target_modules)
        self.exclude = list(exclude)

    def targets(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        return select(model, self.target_modules, self.exclude)

    def transform_model(self, model: nn.Module) -> nn.Module:
        for name, layer in self.checked(self.targets(model)):
            model.set_submodule(name, self.rewrite(name, layer))
        return model

    def checked(self, targets: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
        """Refuse settings that do not fit these layers (before anything is rewritten)."""
        return targets

    def rewrite(self, name: str, layer: nn.Module) -> nn.Module:
        raise NotImplementedError

    def layers(self, model: nn.Module, kind: type = MatrixLayer) -> list[tuple[str, MatrixLayer]]:
        return [(name, m) for name, m in model.named_modules() if isinstance(m, kind)]

    def export(self, model: nn.Module) -> nn.Module:
        for name, layer in self.layers(model):
            model.set_submodule(name, layer.dense())
        return model
