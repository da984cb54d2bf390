"""Tensor-level probes for tests and scripts, on any device (the CPU included):

- `LiveBytes`: the peak of the bytes held by live tensor storages created inside the block (the
  CPU has no allocator statistics; this counts every storage an operation returns, once, until
  it is freed).
- `HostSyncs`: the operations that make the host wait for the device or the device for the host:
  reading a value back (item, float, int, bool, tolist, cpu, numpy) or building a tensor from
  host data (torch.tensor / as_tensor, a blocking host-to-device copy on a GPU).
"""

import weakref

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

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SYNCING:
            self.calls.append(func.__name__)
        return func(*args, **(kwargs or {}))
