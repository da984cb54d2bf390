"""Training-dynamics measurements, logged as validation metrics (so they reach summary.json).

- `Memorisation`: over the noisy-label training samples (y ≠ y_clean), the fraction predicted
  as their noisy label (`val/mem_noisy`) and as their clean label (`val/mem_clean`).
- `SoftmaxCollapse` (Prieto et al. 2025), as the official code's logger defines it
  (`compute_softmax_collapse` in logger.py of grokking-at-the-edge-of-numerical-stability): the
  fraction of samples whose float32 Σ exp(z − max z) is exactly 1, i.e. every other class's
  term is absorbed when it is added to the top class's 1 (a logit gap of ~17).
  `val/softmax_collapse` on the training samples (what the paper plots) and
  `val/softmax_collapse_val` on the validation samples. Whether ~100 terms of ~1e-8 are
  absorbed depends on the order `torch.sum` adds them in (the CPU kernel adds the small ones
  together first), as in the official code. Beside it, on the training samples: `val/zero_loss`,
  the fraction whose float32 loss is exactly 0 (the official `zero_terms`; the loss kernel sums
  in its own order, so it is neither a subset nor a superset of the collapse), and the stricter
  `val/zero_gradient`, the fraction whose whole float32 gradient p − onehot is exactly 0 (a gap
  beyond float32's exp range, ~104; implies both).
- `RankMe` (Garrido et al. 2023): exp(−Σ p_k log p_k) with p_k = σ_k/‖σ‖₁ + 1e-7, σ the
  singular values of the N×D matrix of validation penultimate features (`val/rankme`).
- `Spectra`: per 2-D weight, the nuclear norm and effective rank (RankMe of its singular
  values) of the weight and of its last gradient; layer means are logged
  (`val/weight_erank`, `val/grad_erank`, `val/weight_nuclear`, `val/grad_nuclear`) and the
  per-layer values written to `<run dir>/spectra.jsonl` at every validation.
"""

import json
from pathlib import Path


import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lrlab.data.loader import private_generator


@torch.no_grad()
def predict(task, dataset, batch_size: int = 1024) -> dict[str, torch.Tensor]:
    """Logits, features and labels of a whole split, in eval mode."""
    was_training = task.training
    task.eval()
    parts: dict[str, list] = {"logits": [], "features": [], "y": [], "y_clean": []}
    for batch in DataLoader(dataset, batch_size=batch_size, generator=private_generator(0)):
        out = task.model(batch["x"].to(task.device))
        parts["logits"].append(out["logits"].float().cpu())
        parts["features"].append(out["features"].float().cpu())
        parts["y"].append(batch["y"])
        parts["y_clean"].append(batch.get("y_clean", batch["y"]))
    task.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def effective_rank(singular: torch.Tensor) -> float:
    p = singular / singular.sum() + 1e-7
    return float(torch.exp(-(p * p.log()).sum()))


def rankme(features: torch.Tensor) -> float:
    return effective_rank(torch.linalg.svdvals(features.double()))


def zero_loss_fraction(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((F.cross_entropy(logits.float(), labels, reduction="none") == 0).float().mean())


def softmax_collapse_fraction(logits: torch.Tensor) -> float:
    shifted = logits.float() - logits.float().amax(dim=1, keepdim=True)
    return float((shifted.exp().sum(dim=1) == 1).float().mean())


def zero_gradient_fraction(logits: torch.Tensor, labels: torch.Tensor) -> float:
    grad = logits.float().softmax(-1) - F.one_hot(labels, logits.shape[1]).float()
    return float((grad == 0).all(1).float().mean())


class _SplitMetric(L.Callback):
    split = "train"

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        dm = trainer.datamodule
        dataset = dm.train_set if self.split == "train" else dm.val_set
        for name, value in self.measure(predict(pl_module, dataset)).items():
            pl_module.log(f"val/{name}", value)

    def measure(self, out: dict) -> dict[str, float]:
        raise NotImplementedError


class Memorisation(_SplitMetric):
    def measure(self, out: dict) -> dict[str, float]:
        noisy = out["y"] != out["y_clean"]
        if not noisy.any():
            return {}
        pred = out["logits"].argmax(-1)[noisy]
        return {"mem_noisy": float((pred == out["y"][noisy]).float().mean()),
                "mem_clean": float((pred == out["y_clean"][noisy]).float().mean())}


class SoftmaxCollapse(_SplitMetric):
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        if not trainer.sanity_checking:
            held_out = predict(pl_module, trainer.datamodule.val_set)["logits"]
            pl_module.log("val/softmax_collapse_val", softmax_collapse_fraction(held_out))

    def measure(self, out: dict) -> dict[str, float]:
        return {"softmax_collapse": softmax_collapse_fraction(out["logits"]),
                "zero_loss": zero_loss_fraction(out["logits"], out["y"]),
                "zero_gradient": zero_gradient_fraction(out["logits"], out["y"])}


class RankMe(_SplitMetric):
    split = "val"

    def measure(self, out: dict) -> dict[str, float]:
        return {"rankme": rankme(out["features"])}


class Spectra(L.Callback):
    def __init__(self, path: str | None = None):
        self.path = Path(path) if path else None
        self.grad_spectra: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        interval = trainer.val_check_interval
        if isinstance(interval, int) and (trainer.global_step + 1) % interval:
            return  # keep only the gradient of the step right before a validation
        with torch.no_grad():  # singular values on the device: no gradient is copied to the host
            self.grad_spectra = {n: torch.linalg.svdvals(p.grad.detach().double())
                          for n, p in pl_module.model.named_parameters() if p.grad is not None and p.ndim == 2}

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        rows = []
        for name, weight in pl_module.model.named_parameters():
            if weight.ndim != 2:
                continue
            row = {"layer": name}
            grad = self.grad_spectra.get(name)
            for kind, singular in (("weight", torch.linalg.svdvals(weight.detach().double()).cpu()),
                                   ("grad", None if grad is None else grad.cpu())):
                if singular is not None:
                    row[f"{kind}_nuclear"], row[f"{kind}_erank"] = float(singular.sum()), effective_rank(singular)
            rows.append(row)
        for key in ("weight_erank", "grad_erank", "weight_nuclear", "grad_nuclear"):
            values = [r[key] for r in rows if key in r]
            if values:
                pl_module.log(f"val/{key}", sum(values) / len(values))
        if self.path is not None and trainer.is_global_zero:
            with self.path.open("a") as out:
                out.write(json.dumps({"step": trainer.global_step, "layers": rows}) + "\n")
