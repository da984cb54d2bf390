"""Random-number generator state in every checkpoint, so a resumed run draws what the straight
run drew (dropout masks, nested-dropout truncations, random projections) after the checkpoint.

Saved: torch's CPU generator, each CUDA device's generator and Python's `random` (all tensors
and primitives, so `weights_only` loads them); restored when the checkpoint is loaded, before
the first resumed step. Under data parallelism rank 0's state is saved; every rank is seeded
alike, so every rank's state was rank 0's.
"""

import random

import lightning as L
import torch


class RNGState(L.Callback):
    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
