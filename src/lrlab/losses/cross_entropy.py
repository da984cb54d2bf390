"""Cross-entropy, the default loss of every task.

Classification: mean over samples of −log softmax(z)_y. Causal LM: next-token cross-entropy,
mean over the predicted tokens (label −100 is ignored: padding), computed in fp32 from the
logits the way Hugging Face's `ForCausalLMLoss` does (labels shifted left by padding, not the
logits sliced), so the value equals the model's own `loss` output bit for bit.
"""

import torch
import torch.nn.functional as F

from lrlab.protocol import Loss, weighted_mean

IGNORE = -100


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """The token each position predicts: labels shifted left, the last position ignored."""
    return F.pad(labels, (0, 1), value=IGNORE)[..., 1:]


def causal_lm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    targets = next_token_targets(labels).reshape(-1)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets, ignore_index=IGNORE)


def weighted_causal_lm_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ over predicted tokens of wₛ·ℓₜ / Σ wₛ, each token weighted by its sample's weight."""
    targets = next_token_targets(labels)
    per_token = F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    token_weights = (targets != IGNORE).to(per_token.dtype) * weights.to(per_token.dtype)[:, None]
    return (per_token * token_weights).sum() / token_weights.sum().clamp_min(torch.finfo(per_token.dtype).tiny)


class CrossEntropy(Loss):
    def forward(self, outputs: dict, batch: dict, task, weights: torch.Tensor | None = None) -> torch.Tensor:
        logits = outputs["logits"]
        if task.kind == "causal_lm":
            if weights is None:
                return causal_lm_cross_entropy(logits, batch["labels"])
            return weighted_causal_lm_cross_entropy(logits, batch["labels"], weights)
        if weights is None:
            return F.cross_entropy(logits, batch["y"])
        return weighted_mean(F.cross_entropy(logits, batch["y"], reduction="none"), weights)
