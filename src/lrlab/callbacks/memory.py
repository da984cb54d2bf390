"""Peak memory: CUDA max allocated on GPU, otherwise the process's peak resident set (RSS).

The peak is checkpointed, so a resumed run reports the largest of all its segments."""

import resource
import sys

import lightning as L
import torch


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class PeakMemory(L.Callback):
    def __init__(self):
        self.earlier = 0  # the peak of the segments before a resume
        self.device = torch.device("cpu")

    def on_train_start(self, trainer, pl_module) -> None:
        self.device = pl_module.device
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def measure(self, device: torch.device) -> int:
        now = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else peak_rss_bytes()
        return max(now, self.earlier)

    def state_dict(self) -> dict:
        return {"earlier": self.measure(self.device)}

    def load_state_dict(self, state: dict) -> None:
        self.earlier = int(state["earlier"])
