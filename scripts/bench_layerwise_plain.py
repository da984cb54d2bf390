"""Peak RSS of llama_60m (vocab 32,000, batch 16 x 128, AdamW, 3 steps) in a plain PyTorch
loop, with and without the layer-wise hooks, in the order Lightning runs a step (forward,
zero_grad, backward, step); one process per mode, so each peak is its own.

    OMP_NUM_THREADS=1 python scripts/bench_layerwise_plain.py normal
    OMP_NUM_THREADS=1 python scripts/bench_layerwise_plain.py layerwise
"""

import resource
import sys

import torch

from lrlab.instantiate import instantiate_node
from lrlab.optim import adamw, layerwise
from lrlab.train import compose


def main(mode: str) -> None:
    torch.manual_seed(0)
    model = instantiate_node(compose(["model=llama_60m", "model.vocab_size=32000"]).model, "model")
    optimizer = adamw.build(model, lr=1e-3)
    if mode == "layerwise":
        layerwise.attach(optimizer)
    ids = torch.randint(0, 32000, (16, 128))
    for _ in range(3):
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, 32000), ids.reshape(-1))
        del logits
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(mode, f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB peak RSS")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "normal")
