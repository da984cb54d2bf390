"""What every adapter shares: an `Adapter` is a `lrlab.protocol.Method` whose `transform_model`
freezes the pre-trained weights and adds (or unfreezes) what trains.

Targets: `target_modules` names the adapted modules (full names or name suffixes, as PEFT);
null takes the model's default, as PEFT keeps a per-architecture table: Hugging Face models
(also inside a classifier) use PEFT's LoRA table (LLaMA: q_proj, v_proj; BERT: query, value);
lrlab's classifiers adapt every linear (or convolution) of their feature body. `train_also` names
modules that train fully besides the adapter; null means the classifier's freshly initialised
`head` when the model has one, nothing otherwise.
"""

import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
from torch import nn
from transformers import PreTrainedModel

from lrlab.errors import require
from lrlab.protocol import Method

ADAPTABLE = (nn.Linear, nn.Conv2d)


def is_target(name: str, target_modules: list[str]) -> bool:
    """A module named `name` is adapted when its name is, or ends in, one of `target_modules`."""
    return any(name == t or name.endswith("." + t) for t in target_modules)


def default_targets(model: nn.Module) -> list[str]:
    """The model's default adapted modules (see the module docstring)."""
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.config.model_type in PEFT_TARGETS:
            return list(PEFT_TARGETS[module.config.model_type])
    body = getattr(model, "body", None)
    require(body is not None, "adapter.target_modules", None,
            f"name the modules to adapt: {type(model).__name__} has no default targets")
    return [f"body.{name}" for name, module in body.named_modules() if isinstance(module, ADAPTABLE)]


def default_train_also(model: nn.Module) -> list[str]:
    return ["head"] if isinstance(getattr(model, "head", None), nn.Module) else []


def targeted(model: nn.Module, target_modules: list[str], kinds=(nn.Linear,)) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module of `kinds` that `target_modules` names; refuses none."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, kinds) and is_target(name, target_modules)]
    allowed = " or ".join(k.__name__ for k in kinds)
    require(bool(found), "adapter.target_modules", target_modules, f"names of {allowed} modules in the model")
    return found


def check_rank(modules: list[tuple[str, nn.Module]], r: int, key: str = "adapter.r") -> None:
    """The rank must be ≥ 1 and at most the smaller side of every adapted weight."""
    require(isinstance(r, int) and r >= 1, key, r, "an integer >= 1")
    for name, module in modules:
        smallest = min(module.weight.shape[0], module.weight[0].numel())
        require(r <= smallest, key, r, f"at most {smallest}, the smaller side of {name}'s weight")


def train_fully(model: nn.Module, names: list[str]) -> nn.Module:
    """Let the modules named in `names` (e.g. a fresh classifier `head`) train fully."""
    for name, param in model.named_parameters():
        if any(f".{part}." in f".{name}" for part in names):
            param.requires_grad_(True)
    return model


def replace_linears(model: nn.Module, target_modules: list[str], make) -> int:
    """Swap every `nn.Linear` named (or ending in) one of `target_modules` for `make(linear)`."""
    modules = targeted(model, target_modules)
    for name, module in modules:
        model.set_submodule(name, make(module))
    return len(modules)


def merge_modules(model: nn.Module, kind: type) -> nn.Module:
    """Replace every `kind` module by its `merged()` plain linear."""
    for name, module in list(model.named_modules()):
        if isinstance(module, kind):
            model.set_submodule(name, module.merged())
    return model


def off_identity(gram: torch.Tensor) -> torch.Tensor:
    """‖G − I‖_F of a square Gram matrix: the orthogonality penalty of AdaLoRA and IncreLoRA, with
    G = A·Aᵀ for a rank×in factor A and G = Bᵀ·B for an out×rank factor B."""
    eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
    return torch.linalg.norm(gram - eye, "fro")


class Adapter(Method):
    """Holds the targets and `train_also`; subclasses implement `adapt(model) -> model`."""

    def __init__(self, target_modules: list[str] | None = None, train_also: list[str] | None = None):
        super().__init__()
        self.target_modules = None if target_modules is None else list(target_modules)
        self.train_also = None if train_also is None else list(train_also)

    def resolve(self, model: nn.Module) -> list[str]:
        """The targets for this model (the configured ones, or the model's defaults)."""
        if self.target_modules is None:
            self.target_modules = default_targets(model)
        if self.train_also is None:
            self.train_also = default_train_also(model)
        return self.target_modules

    def transform_model(self, model: nn.Module) -> nn.Module:
        self.resolve(model)
        return train_fully(self.adapt(model), self.train_also)

    def adapt(self, model: nn.Module) -> nn.Module:
        raise NotImplementedError

