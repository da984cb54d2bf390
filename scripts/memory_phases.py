"""Where a run's peak RSS happens: one `lrlab train` run in this process, with a callback that
names the phase (setup, forward/backward/step of each batch, validation, checkpoint write, ...)
and records, when each phase ends, the resident set (VmRSS) and the process's high-water mark
(VmHWM). The phase in which VmHWM rises is where the peak was set.

    OMP_NUM_THREADS=1 python scripts/memory_phases.py model=llama_60m optimizer=adamw [optimizer.layerwise=true]

The setting is `scripts/bench_memory.py`'s (batch 4 x 128, vocab 32,000, 3 steps); more
overrides follow it.
"""

import sys
import tempfile
from pathlib import Path

import lightning as L

from lrlab import train
from lrlab.build import compose
from lrlab.callbacks import checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from bench_memory import SETTING  # noqa: E402

MiB = 2 ** 20


def status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MiB
    raise KeyError(field)


class Phases(L.Callback):
    def __init__(self):
        self.phase, self.rows = "before fit", []

    def enter(self, phase: str) -> None:
        self.rows.append((self.phase, status_mib("VmRSS"), status_mib("VmHWM")))
        self.phase = phase

    def on_fit_start(self, trainer, pl_module):
        self.enter("setup (optimizer, sanity check)")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.enter(f"step {trainer.global_step + 1}: forward")

    def on_before_backward(self, trainer, pl_module, loss):
        self.enter(f"step {trainer.global_step + 1}: backward")

    def on_after_backward(self, trainer, pl_module):
        self.enter(f"step {trainer.global_step + 1}: after backward → optimizer step")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.enter(f"after step {trainer.global_step}")

    def on_validation_start(self, trainer, pl_module):
        self.enter("validation")

    def on_validation_end(self, trainer, pl_module):
        self.enter("after validation")

    def on_save_checkpoint(self, trainer, pl_module, state):
        self.enter("checkpoint: state dict → torch.save")

    def on_train_end(self, trainer, pl_module):
        self.enter("train end")

    def on_fit_end(self, trainer, pl_module):
        self.enter("fit end")


def main(overrides: list[str]) -> None:
    phases = Phases()
    save = checkpoint.AtomicCheckpointIO.save_checkpoint

    def save_named(io, *args, **kwargs):
        phases.enter("checkpoint: torch.save")
        save(io, *args, **kwargs)
        phases.enter("after checkpoint write")

    checkpoint.AtomicCheckpointIO.save_checkpoint = save_named
    with tempfile.TemporaryDirectory() as out:
        cfg = compose([*SETTING, *overrides, "run_name=phases"], run_dir=f"{out}/phases")
        train.run(cfg, callbacks=[phases])
    phases.enter("done")
    print("| phase | RSS at its end (MiB) | peak so far (MiB) |\n|---|---|---|")
    last = 0.0
    for phase, rss, hwm in phases.rows:
        print(f"| {phase} | {rss:.0f} | {hwm:.0f}{' ↑' if hwm > last + 1 else ''} |")
        last = hwm


if __name__ == "__main__":
    main(sys.argv[1:])
