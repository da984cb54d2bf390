"""BA-LoRA: PiSSA-initialised LoRA with three output regularizers (Chang et al., 2024, "BA-LoRA:
Bias-Alleviating Low-Rank Adaptation to Mitigate Catastrophic Inheritance in Large Language
Models", arXiv 2408.04556).

Adapter: PiSSA (A, B from the top-r singular triplets of W, the residual W - s B A frozen).
Loss: task loss + lambda1 * consistency + lambda2 * diversity + lambda3 * svd, on the adapted
model's batch logits Z (n x c) and the frozen pre-trained model's logits Z0 for the same batch:
- consistency = mean((Z_i/||Z_i|| - Z0_i/||Z0_i||)^2), each row L2-normalised;
- diversity = sum_{i != j} C_ij^2 / c, C = Zc^T Zc / (n - 1), Zc = Z - batch mean (decorrelates
  the logit dimensions);
- svd = -sum_{i <= k} s_i / sum_i s_i over the singular values s of Z.
Generation (logits with a sequence axis, n x T x V): consistency = KL(p0 || p) summed over tokens
and vocabulary, divided by n (the reference's `batchmean`); diversity = -(mean token entropy of
p); svd on each sequence's T x V logits, averaged over the batch.
Defaults lambda = 1e-4, 3e-4, 1e-4 and k = 3 (the reference code).

The frozen pre-trained model: PiSSA's base layers hold the residual, so `disable_adapter()`
would give the residual model, not the original. Decision: the frozen pass runs the same model
with every trainable parameter temporarily set back to its value at adapter time (B0, A0 and
the initial head), since residual + s B0 A0 = W; this costs one copy of the trainable
parameters, not a second model. It runs in eval mode under no_grad (the reference's frozen
model is in eval mode too). The copy is not checkpointed: re-applying the adapter on a resume
recomputes it (PiSSA's SVD is deterministic, the head is seeded). The svd term keeps its
gradient, as in the reference code (cyp-jlu-ai/BA-LoRA `train.py`, `svd_regularization`, at
its last commit e119f2f: `linalg.svd` outside any no_grad; one intermediate commit, 54c44cb,
wrapped it in no_grad, which made the term a constant, and the next, ba44cd3, removed that).
"""

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from lrlab.adapters.peft_glue import LoRA
from lrlab.errors import require


def consistency(logits: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
    if logits.ndim == 3:
        return F.kl_div(logits.log_softmax(-1), frozen.log_softmax(-1), reduction="batchmean", log_target=True)
    return F.mse_loss(F.normalize(logits, dim=-1), F.normalize(frozen, dim=-1))


def diversity(logits: torch.Tensor) -> torch.Tensor:
    if logits.ndim == 3:
        log_p = logits.log_softmax(-1)
        return (log_p.exp() * log_p).sum(-1).mean()
    centred = logits - logits.mean(0)
    cov = centred.T @ centred / (logits.shape[0] - 1)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    return off_diagonal.pow(2).sum() / logits.shape[1]


def svd_term(logits: torch.Tensor, k: int) -> torch.Tensor:
    s = torch.linalg.svdvals(logits.float())
    return -(s[..., :k].sum(-1) / s.sum(-1).clamp_min(1e-10)).mean()


@contextmanager
def _values(model: nn.Module, initial: dict[str, torch.Tensor]):
    """Temporarily give each parameter named in `initial` its stored value."""
    saved = {}
    for name, param in model.named_parameters():
        if name in initial:
            initial[name] = initial[name].to(param.device)
            saved[param], param.data = param.data, initial[name]
    try:
        yield
    finally:
        for param, data in saved.items():
            param.data = data


def pretrained_logits(task, batch: dict, initial: dict[str, torch.Tensor]) -> torch.Tensor:
    """The frozen pre-trained model's logits for `batch` (eval mode, no gradient)."""
    training = task.model.training
    task.model.eval()
    try:
        with torch.no_grad(), _values(task.model, initial):
            return task.forward_batch(batch)["logits"]
    finally:
        task.model.train(training)


class BALoRA(LoRA):
    """PiSSA LoRA whose `loss_term` is lambda1 * consistency + lambda2 * diversity + lambda3 * svd."""
    shardable = False  # FSDP2: its frozen pass swaps in whole-shape copies of the parameters

    def __init__(self, target_modules=None, r: int = 8, alpha: float | None = None, dropout: float = 0.0,
                 lambda1: float = 1e-4, lambda2: float = 3e-4, lambda3: float = 1e-4, k: int = 3, train_also=None):
        super().__init__(target_modules, r, alpha, dropout, train_also, init="pissa")
        for key, value in (("lambda1", lambda1), ("lambda2", lambda2), ("lambda3", lambda3)):
            require(value >= 0, f"adapter.{key}", value, "a weight >= 0")
        require(k >= 1, "adapter.k", k, "an integer >= 1 (top singular values in the svd term)")
        self.lambdas, self.k = (lambda1, lambda2, lambda3), k
        self.initial: dict[str, torch.Tensor] = {}

    def transform_model(self, model: nn.Module) -> nn.Module:
        model = super().transform_model(model)
        self.initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        return model

    def loss_term(self, task, outputs: dict, batch: dict) -> torch.Tensor:
        logits = outputs["logits"]
        frozen = pretrained_logits(task, batch, self.initial)
        terms = (consistency(logits, frozen), diversity(logits), svd_term(logits, self.k))
        return sum(weight * term for weight, term in zip(self.lambdas, terms))
