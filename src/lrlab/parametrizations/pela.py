"""PELA: parameter-efficient models by low-rank approximation and distillation (Guo et al., CVPR 2024,
"PELA: Learning Parameter-Efficient Models with Low-Rank Approximation", arXiv 2310.10700; official code
github.com/guoyang9/PELA: `DeiT/low_rank.py`, `DeiT/engine.py`, `DeiT/scripts/*.sh`,
`ALBEF/Pretrain.py`, `ALBEF/models/model_pretrain.py`, read there).

Each targeted layer (m×n) of the trained model becomes B·A with rank r = ⌊m·n / (c·(m+n))⌋
(c = `compression_ratio`; the DeiT scripts use 2; `rank` sets one r for every layer instead), from
the SVD of its weight: B = U_r√Σ_r, A = √Σ_r·V_rᵀ. The compressed model is then trained with, on top of the task loss:
- feature distillation: `feature_weight` × the mean over feature modules of MSE(student feature,
  teacher feature), the teacher being the original model (frozen, eval mode) on the same batch;
  features are the outputs of each block (DeiT: each transformer block): here a language model's
  decoder layers, a classifier's body activations, or the modules named in `feature_modules`;
- logit distillation: `logit_weight` × MSE(student logits, teacher logits) (DeiT `kd_beta`, 0);
- weight perturbation: `perturbation_weight` × the mean over layers of (max|B·A − W_teacher| − ε)²,
  ε = `perturbation_eps` = 1e-3 (`inf_norm`; off in the DeiT scripts, on in ALBEF).
Defaults follow the DeiT image-classification scripts (feature 1.0, logits 0, perturbation 0); ALBEF's
pretraining uses feature 0.1 and perturbation 1.0. Official details kept: layers with fewer than 10
outputs stay dense (`out_features < 10`); the factors carry the original bias.

The teacher is the model as built, or the trained run named by `init_from` (a checkpoint whose
`model.*` weights are loaded before factorizing). Its weights are buffers: each compressed layer keeps
its original matrix (`teacher_weight`), the method keeps every other original parameter (and buffer, e.g.
batch-norm statistics) keyed by name, so the teacher forward is the same model run with those values
(`torch.func.functional_call`) and the compressed layers in teacher mode. All of it is checkpointed with the task.
"""

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from lrlab.errors import require
from lrlab.parametrizations.base import DEFAULT_EXCLUDE, Factorized, Parametrization, check_rank

MIN_OUTPUTS = 10
ACTIVATIONS = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU)


def pela_rank(m: int, n: int, compression_ratio: float) -> int:
    return max(1, int((m * n) // (compression_ratio * (m + n))))


class DistilledLayer(Factorized):
    """B·A, or the original weight while the model runs as the teacher."""

    def __init__(self, layer: nn.Module, rank: int):
        super().__init__(layer, rank, 1.0, init="svd")
        self.register_buffer("teacher_weight", layer.weight.detach().reshape(self.out_features, -1).clone())
        self.teaching = False

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.teacher_weight, self.bias) if self.teaching else super().linear(x)

    def conv2d(self, x: torch.Tensor) -> torch.Tensor:
        return self.convolve(x, self.teacher_weight, self.bias) if self.teaching else super().conv2d(x)


def load_model_weights(model: nn.Module, path: str) -> None:
    """Load the `model.*` weights of an lrlab checkpoint (or a plain state dict) into `model`."""
    require(Path(path).is_file(), "parametrization.init_from", path, "an existing checkpoint file")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    weights = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")} or state
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        require(False, "parametrization.init_from", path, f"does not fit this model: {str(err).splitlines()[0]}")


def buffer_name(parameter_name: str) -> str:
    return "teacher__" + parameter_name.replace(".", "__")


class _TeacherCall(nn.Module):
    """Runs `task.forward_batch` so `functional_call` can swap the model's parameters for the teacher's."""

    def __init__(self, task):
        super().__init__()
        self.model, self.forward_batch = task.model, task.forward_batch

    def forward(self, batch):
        return self.forward_batch(batch)


class PELA(Parametrization):
    shardable = False  # FSDP2: transposed (non-contiguous) factors FSDP2 cannot shard
    def __init__(self, compression_ratio: float = 2.0, rank: int | None = None, feature_weight: float = 1.0,
                 logit_weight: float = 0.0, perturbation_weight: float = 0.0, perturbation_eps: float = 1e-3, feature_modules=None,
                 init_from: str | None = None, target_modules=None, exclude=DEFAULT_EXCLUDE):
        super().__init__(target_modules, exclude)
        require(compression_ratio > 0, "parametrization.compression_ratio", compression_ratio, "a number > 0")
        require(rank is None or (isinstance(rank, int) and rank >= 1), "parametrization.rank", rank,
                "null (from compression_ratio) or an integer >= 1")
        for key, value in (("feature_weight", feature_weight), ("logit_weight", logit_weight),
                           ("perturbation_weight", perturbation_weight)):
            require(value >= 0, f"parametrization.{key}", value, "a number >= 0")
        self.compression_ratio, self.feature_weight, self.logit_weight = compression_ratio, feature_weight, logit_weight
        self.perturbation_weight, self.perturbation_eps = perturbation_weight, perturbation_eps
        self.feature_modules = None if feature_modules is None else list(feature_modules)
        self.init_from, self.rank = init_from, rank
        self._teaching = False
        self._features: dict[str, list[torch.Tensor]] = {"student": [], "teacher": []}
        self._hooks: list = []
        self._teacher_keys: list[str] = []

    def targets(self, model):
        return [(name, layer) for name, layer in super().targets(model) if layer.weight.shape[0] >= MIN_OUTPUTS]

    def checked(self, targets):
        if self.rank is not None:
            check_rank(targets, self.rank)
        return targets

    def rewrite(self, name: str, layer: nn.Module) -> nn.Module:
        m, n = layer.weight.shape[0], layer.weight[0].numel()
        return DistilledLayer(layer, self.rank or pela_rank(m, n, self.compression_ratio))

    def transform_model(self, model: nn.Module) -> nn.Module:
        if self.init_from:
            load_model_weights(model, self.init_from)
        compressed = {f"{name}.weight" for name, _ in self.targets(model)}
        originals = [*model.named_parameters(), *model.named_buffers()]
        for name, value in originals:
            if name not in compressed:
                self.register_buffer(buffer_name(name), value.detach().clone())
                self._teacher_keys.append(name)
        model = super().transform_model(model)
        for module in self.feature_layers(model):
            self._hooks.append(module.register_forward_hook(self._capture))
        return model

    def feature_layers(self, model: nn.Module) -> list[nn.Module]:
        if self.feature_modules is not None:
            found = [m for name, m in model.named_modules() if any(name.endswith(f) for f in self.feature_modules)]
            require(bool(found), "parametrization.feature_modules", self.feature_modules, "name no module of the model")
            return found
        if isinstance(model, PreTrainedModel) or getattr(model, "body", None) is None:
            return [block for blocks in model.modules() if isinstance(blocks, nn.ModuleList) for block in blocks]
        return [m for m in model.body.modules() if isinstance(m, ACTIVATIONS)]

    def _capture(self, module, args, output) -> None:
        if self._teaching or module.training:
            self._features["teacher" if self._teaching else "student"].append(
                output[0] if isinstance(output, tuple) else output)

    @contextlib.contextmanager
    def teacher(self, model: nn.Module):
        layers = [layer for _, layer in self.layers(model, DistilledLayer)]
        was_training = model.training
        model.eval()
        self._teaching = True
        for layer in layers:
            layer.teaching = True
        try:
            yield
        finally:
            for layer in layers:
                layer.teaching = False
            self._teaching = False
            model.train(was_training)

    def teacher_outputs(self, task, batch: dict) -> dict:
        weights = {f"model.{name}": getattr(self, buffer_name(name)) for name in self._teacher_keys}
        with torch.no_grad(), self.teacher(task.model):
            return torch.func.functional_call(_TeacherCall(task), weights, (batch,))

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor | None:
        student = self._features["student"]
        self._features = {"student": [], "teacher": []}
        total = torch.zeros((), device=outputs["logits"].device)
        if self.feature_weight or self.logit_weight:
            teacher_logits = self.teacher_outputs(task, batch)["logits"]
            teacher = self._features["teacher"]
            self._features["teacher"] = []
            pairs = list(zip(student[-len(teacher):], teacher)) if teacher else []
            if self.feature_weight and pairs:
                total = total + self.feature_weight * sum(F.mse_loss(s, t) for s, t in pairs) / len(pairs)
            if self.logit_weight:
                total = total + self.logit_weight * F.mse_loss(outputs["logits"], teacher_logits)
        if self.perturbation_weight:
            total = total + self.perturbation_weight * self.perturbation(task.model)
        return total

    def perturbation(self, model: nn.Module) -> torch.Tensor:
        errors = [((layer.matrix() - layer.teacher_weight).abs().max() - self.perturbation_eps) ** 2
                  for _, layer in self.layers(model, DistilledLayer)]
        return sum(errors) / len(errors)

    def export(self, model: nn.Module) -> nn.Module:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        return super().export(model)
