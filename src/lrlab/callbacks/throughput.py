"""Training throughput: tokens/s (language models) or samples/s (classifiers), and step time.

Timed from the end of the `warmup`-th training batch to the end of training, across all
ranks (per-rank counts × world size). Validation time is excluded, so the number is the
training rate; start-up and the first slow steps do not count.
"""

import time

import lightning as L


class Throughput(L.Callback):
    def __init__(self, warmup: int = 5):
        self.warmup = warmup
        self.count, self.steps, self.elapsed = 0, 0, 0.0
        self.last: float | None = None
        self.unit = "samples_per_second"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        if "input_ids" in batch:
            self.unit, size = "tokens_per_second", batch["input_ids"].numel()
        else:
            size = len(batch["y"])
        if self.last is not None:
            self.count += size * trainer.world_size
            self.steps += 1
            self.elapsed += now - self.last
            self.last = now
        elif trainer.global_step >= self.warmup:
            self.last = now

    def on_validation_start(self, trainer, pl_module) -> None:
        self.paused_at = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.last is not None and not trainer.sanity_checking:
            self.last += time.perf_counter() - self.paused_at

    def result(self) -> dict:
        rate = self.count / self.elapsed if self.elapsed > 0 else 0.0
        step_ms = 1000 * self.elapsed / self.steps if self.steps else 0.0
        return {self.unit: rate, "step_ms": step_ms}
