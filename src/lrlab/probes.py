"""Tensor-level probes for tests and scripts, on any device (the CPU included):

- `LiveBytes`: the peak of the bytes held by live tensor storages created inside the block (the
  CPU has no allocator statistics; this counts every storage an operation returns, once, until
  it is freed).
- `HostSyncs`: the operations that make the host wait for the device or the device for the host:
  reading a value back (item, float, int, bool, tolist, cpu, numpy) or building a tensor from
  host data (torch.tensor / as_tensor, a blocking host-to-device copy on a GPU). It counts on
  the CPU what would synchronise on a GPU, so it leaves out the code that works on host tensors
  by design: the data loader (`torch.utils.data`, `lrlab.data`: it runs before the batch is
  moved) and torch's own optimizers, which keep their step counts on the host when not
  capturable (`torch/optim/adam.py`: "step is on CPU"), and tensors made on the host on purpose
  (an explicit `device="cpu"` or a CPU random generator).
- `StepSyncs`: a callback that applies `HostSyncs` to each training step of a run.
"""

import sys
import weakref

import lightning as L
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.sizes: dict[int, int] = {}  # storage address -> bytes, while it lives
        self.now = self.peak = 0

    def _freed(self, address: int) -> None:
        self.now -= self.sizes.pop(address)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                address = storage.data_ptr()
                if address and address not in self.sizes:
                    self.sizes[address] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._freed, address)
        return out


class HostSyncs(TorchFunctionMode):
    SYNCING = {torch.Tensor.item, torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__bool__,
               torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.cpu, torch.Tensor.numpy, torch.tensor,
               torch.as_tensor}

    HOST_SIDE = ("torch.optim.", "torch.utils.data.", "lrlab.data.")
    PASSING = ("torch.overrides", "torch._tensor", "lrlab.probes")  # frames between the caller and this mode

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []  # the operations, in order
        self.callers: list[str] = []  # the module that made each
        self.host: set[int] = set()  # ids of live tensors made on the host on purpose: reading them waits for nothing

    @classmethod
    def caller(cls) -> str:
        frame = sys._getframe(2)
        while frame is not None and frame.f_globals.get("__name__", "").startswith(cls.PASSING):
            frame = frame.f_back
        return "" if frame is None else frame.f_globals.get("__name__", "")

    @staticmethod
    def made_on_host(kwargs: dict) -> bool:
        """Created on the host on purpose: an explicit CPU device or a CPU random generator."""
        generator, device = kwargs.get("generator"), kwargs.get("device")
        return (generator is not None and generator.device.type == "cpu") or (
            device is not None and torch.device(device).type == "cpu")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SYNCING and not (args and isinstance(args[0], torch.Tensor) and id(args[0]) in self.host):
            caller = self.caller()
            if not caller.startswith(self.HOST_SIDE):
                self.calls.append(func.__name__)
                self.callers.append(caller)
        out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and self.made_on_host(kwargs):
            self.host.add(id(out))
            weakref.finalize(out, self.host.discard, id(out))
        return out


class StepSyncs(L.Callback):
    """`HostSyncs` over whole training steps: `steps[k]` lists the host synchronisations from the
    start of step k to the start of step k + 1 (the forward, backward, optimizer step, every
    callback and logger, and the loader's next batch). Add it as a callback
    (`+callbacks.host_syncs._target_=lrlab.probes.StepSyncs`); `last` is the instance of the latest run."""

    last: "StepSyncs | None" = None

    def __init__(self):
        self.counter = HostSyncs()
        self.steps: list[list[str]] = []  # per step: the operations
        self.callers: list[list[str]] = []  # per step: the module that made each
        StepSyncs.last = self

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self.steps:
            self.counter.__enter__()
        self.counter.calls, self.counter.callers = [], []
        self.steps.append(self.counter.calls)
        self.callers.append(self.counter.callers)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.steps:
            self.counter.__exit__(None, None, None)
