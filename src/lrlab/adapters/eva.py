"""EVA: LoRA initialised by Explained Variance Adaptation (Paischer et al., 2024, "One Initialization
to Rule them All: Fine-tuning via Explained Variance Adaptation"), through PEFT.

Init: for each adapted layer, an incremental SVD of its input activations on downstream training
batches (PEFT `initialize_lora_eva_weights`, `IncrementalPCA` of the mean-centred inputs) runs
until the top right singular vectors are stable (cosine >= `tau` between consecutive batches).
A's rows are those right singular vectors, B = 0, so training starts at the pre-trained
function. Rank redistribution: each layer may take up to `rho * r` components; the total budget
`r * layers` goes to the components with the largest explained-variance ratio over all layers
(`rho = 1`: every layer keeps r). PEFT rescales alpha by new_rank / r.

How it plugs in: the init needs downstream batches, so it is the `init_from_data` hook
(`lrlab.protocol`), which the task runs once at the start of `fit` with the train loader, before
the optimizer is built (ranks change the parameter set). Batches are our `{"x", "y", ...}` dicts: the forward is `model(batch["x"])`; for token
inputs (`x` a dict with `attention_mask`) only non-padding positions enter the SVD.
"""

import itertools
import warnings

import peft
import torch
from torch import nn

from lrlab.adapters.base import Adapter, check_rank, targeted
from lrlab.errors import require


def forward(model: nn.Module, batch: dict):
    return model(batch["x"])


def token_mask(batch: dict, peft_config) -> torch.Tensor | None:
    """Which positions of a layer's input enter the SVD: the attention mask, or all rows."""
    x = batch["x"]
    return x["attention_mask"].bool() if isinstance(x, dict) and "attention_mask" in x else None


def layer_rows(layer_input, mask: torch.Tensor | None, layer_name: str) -> torch.Tensor:
    """A layer's input as a 2-D (rows x features) matrix, padding positions dropped."""
    h = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    if mask is not None and h.ndim == 3:
        return h[mask]
    return h.reshape(-1, h.shape[-1])


class Bounded:
    """The loader's batches epoch after epoch, ending in a one-line error after `max_batches`: PEFT
    cycles the loader until every layer's components converge, which never happens when a batch
    holds fewer rows than the components it computes (rho * r). Its length is the loader's."""

    def __init__(self, loader, max_batches: int):
        self.loader, self.max_batches = loader, max_batches

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for count, batch in enumerate(itertools.chain.from_iterable(itertools.repeat(self.loader))):
            require(count < self.max_batches, "adapter.max_init_batches", self.max_batches,
                    "EVA's components did not converge within that many batches: each batch needs at least "
                    "rho * r rows (raise data.batch_size), or lower adapter.tau, or allow more batches")
            yield batch


class EVA(Adapter):
    shardable = False  # FSDP2: its data-driven init hooks whole layers before sharding
    def __init__(self, target_modules=None, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, rho: float = 2.0,
                 tau: float = 0.99, max_init_batches: int = 1000, train_also=None):
        super().__init__(target_modules, train_also)
        require(rho >= 1, "adapter.rho", rho, "a number >= 1 (the largest rank a layer may take is rho * r)")
        require(0 < tau <= 1, "adapter.tau", tau, "a cosine threshold in (0, 1]")
        require(max_init_batches >= 1, "adapter.max_init_batches", max_init_batches, "an integer >= 1")
        self.r, self.alpha, self.dropout, self.rho, self.tau = r, alpha, dropout, rho, tau
        self.max_init_batches = max_init_batches

    def adapt(self, model: nn.Module) -> nn.Module:
        check_rank(targeted(model, self.target_modules), self.r)
        config = peft.LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                                 target_modules=self.target_modules, init_lora_weights="eva",
                                 eva_config=peft.EvaConfig(rho=self.rho, tau=self.tau))
        with warnings.catch_warnings():
            # PEFT suggests meta-device LoRA weights until the init; they could not be moved to the
            # training device before it, and next to the model they are small
            warnings.filterwarnings("ignore", message="lora with eva initialization")
            return peft.get_peft_model(model, config)

    def init_from_data(self, task, loader) -> None:
        peft.initialize_lora_eva_weights(task.model, Bounded(loader, self.max_init_batches), forward_fn=forward,
                                         prepare_model_inputs_fn=token_mask, prepare_layer_inputs_fn=layer_rows,
                                         show_progress_bar=False)

    def export(self, model: nn.Module) -> nn.Module:
        return model.merge_and_unload()
