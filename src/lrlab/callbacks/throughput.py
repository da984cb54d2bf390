"""Training throughput: tokens/s (language models) or samples/s (classifiers), and step time.

Each training step is timed from the end of the previous one (the start of the first) to its
own end, validation excluded, and counted across ranks (per-rank batch × world size). The
first `warmup` steps of each process (start-up, first slow steps) are left out when the run
has later ones; a run with no later step is measured on every step it has, never reported as
0. `measured_steps` says how many steps the rate covers. The totals are checkpointed, so a
resumed run reports all its segments.
"""

import time

import lightning as L

ITEMS, STEPS, SECONDS = 0, 1, 2


class Throughput(L.Callback):
    def __init__(self, warmup: int = 5):
        self.warmup = warmup
        self.unit = "samples_per_second"
        self.warm = [0, 0, 0.0]      # items, steps, seconds after each process's warm-up
        self.every = [0, 0, 0.0]     # the same over every step
        self.seen = 0
        self.last: float | None = None
        self.paused_at: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.last is None:
            self.last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if "input_ids" in batch:
            self.unit, size = "tokens_per_second", batch["input_ids"].numel()
        else:
            size = len(batch["y"])
        step = (size * trainer.world_size, 1, now - self.last)
        self.last, self.seen = now, self.seen + 1
        for total in (self.every, self.warm) if self.seen > self.warmup else (self.every,):
            for i, value in enumerate(step):
                total[i] += value

    def on_validation_start(self, trainer, pl_module) -> None:
        self.paused_at = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.last is not None and self.paused_at is not None and not trainer.sanity_checking:
            self.last += time.perf_counter() - self.paused_at

    def result(self) -> dict:
        items, steps, seconds = self.warm if self.warm[STEPS] else self.every
        rate = items / seconds if seconds > 0 else 0.0
        return {self.unit: rate, "measured_steps": steps, "step_ms": 1000 * seconds / steps if steps else 0.0}

    def state_dict(self) -> dict:
        return {"unit": self.unit, "warm": list(self.warm), "every": list(self.every)}

    def load_state_dict(self, state: dict) -> None:
        self.unit, self.warm, self.every = state["unit"], list(state["warm"]), list(state["every"])
