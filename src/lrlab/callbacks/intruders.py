"""Intruder dimensions (Shuttleworth et al., 2024, "LoRA vs Full Fine-tuning: An Illusion of
Equivalence").

For every adapted linear layer, the top-`top_k` left singular vectors of the fine-tuned weight
W_ft are compared with all left singular vectors of the pre-trained weight W_0; a vector whose
largest |cosine| with any of them is below `threshold` is an intruder. The effective weight
of any linear-like module (plain, PEFT LoRA/DoRA, ALLoRA, SVFit) is read by probing it:
W^T = f(I) - f(0), so one code path serves every adapter and full fine-tuning.

Logged at each validation as `intruders/<layer>` and `intruders/total` (they land in the run
summary's metrics); the last counts are kept on `self.counts`.

Mitigation (optional, `mitigate_lambda` < 1): at the end of training each intruder direction's
singular value is scaled by lambda, W <- W - (1 - lambda) sum_i s_i u_i v_i^T over intruders i,
applied to the layer's base weight (the paper's post-hoc scaling).
"""

import lightning as L
import torch
from torch import nn


def effective_weight(module: nn.Module, in_features: int) -> torch.Tensor:
    probe = torch.eye(in_features, device=_device(module), dtype=_dtype(module))
    with torch.no_grad():
        return (module(probe) - module(torch.zeros_like(probe))).T.float()


def _device(module):
    return next(module.parameters()).device


def _dtype(module):
    return next(p for p in module.parameters() if p.is_floating_point()).dtype


def intruder_directions(pretrained_u: torch.Tensor, weight: torch.Tensor, top_k: int, threshold: float):
    """Indices (into the top-k) of intruders, plus the SVD of `weight`."""
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    k = min(top_k, s.numel())
    similarity = (u[:, :k].T @ pretrained_u).abs().amax(dim=1)
    return (similarity < threshold).nonzero().squeeze(1), (u, s, vh)


def _linear_layers(model: nn.Module, include: list[str], exclude: list[str]) -> dict[str, tuple[nn.Module, int]]:
    layers = {}
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None) or getattr(module, "base", None)
        linear = base if isinstance(base, nn.Linear) else module if isinstance(module, nn.Linear) else None
        if linear is None or any(name.startswith(known + ".") for known in layers):
            continue
        if include and not any(part in name for part in include) or any(part in name for part in exclude):
            continue
        layers[name] = (module, linear.in_features)
    return layers


class IntruderDimensions(L.Callback):
    def __init__(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ("head",), top_k: int = 10,
                 threshold: float = 0.5, mitigate_lambda: float = 1.0):
        self.include, self.exclude = list(include), list(exclude)
        self.top_k, self.threshold, self.mitigate_lambda = top_k, threshold, mitigate_lambda
        self.pretrained_u: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        self.layers = _linear_layers(pl_module.model, self.include, self.exclude)
        for name, (module, width) in self.layers.items():
            if name not in self.pretrained_u:
                self.pretrained_u[name] = torch.linalg.svd(effective_weight(module, width), full_matrices=False)[0]

    def measure(self) -> dict[str, int]:
        self.counts = {}
        for name, (module, width) in self.layers.items():
            found, _ = intruder_directions(self.pretrained_u[name], effective_weight(module, width),
                                           self.top_k, self.threshold)
            self.counts[name] = int(found.numel())
        return self.counts

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        counts = self.measure()
        for name, count in counts.items():
            pl_module.log(f"intruders/{name}", float(count))
        pl_module.log("intruders/total", float(sum(counts.values())))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.mitigate_lambda < 1.0:
            for name, (module, width) in self.layers.items():
                found, (u, s, vh) = intruder_directions(self.pretrained_u[name], effective_weight(module, width),
                                                        self.top_k, self.threshold)
                target = module if isinstance(module, nn.Linear) else module.base_layer if hasattr(
                    module, "base_layer") else module.base
                correction = (u[:, found] * s[found]) @ vh[found]
                with torch.no_grad():
                    target.weight.sub_((1 - self.mitigate_lambda) * correction.to(target.weight.dtype))
            self.measure()

    def state_dict(self) -> dict:
        return {"pretrained_u": self.pretrained_u}

    def load_state_dict(self, state: dict) -> None:
        self.pretrained_u = state["pretrained_u"]
