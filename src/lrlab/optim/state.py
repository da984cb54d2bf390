"""Optimizer state: its exact size in bytes, and a checkpoint that restores it exactly.

`state_bytes` sums every state tensor (what the run summary reports per param group).

`torch.optim.Optimizer.load_state_dict` casts every state tensor but `step` to its parameter's
dtype: integer indices (DCT frequencies, LIFT's selected entries) come back as floats, and fp32
moments of a bf16 weight are rounded through bf16. Optimizers holding such state call
`restore_saved_dtypes` after torch's load: every state tensor goes back to the dtype it was saved
in, on its parameter's device.
"""

import torch


def restore_saved_dtypes(optimizer: torch.optim.Optimizer, state_dict: dict) -> None:
    saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for saved_id, p in zip(saved_ids, params):
        for key, value in state_dict["state"].get(saved_id, {}).items():
            if torch.is_tensor(value):
                optimizer.state[p][key] = value.to(device=p.device)


def state_bytes(optimizer: torch.optim.Optimizer) -> tuple[int, list[int]]:
    """Exact optimizer-state bytes: total and per param group, summed over state tensors."""
    by_group = []
    for group in optimizer.param_groups:
        n = 0
        for p in group["params"]:
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value):
                    n += value.numel() * value.element_size()
        by_group.append(n)
    return sum(by_group), by_group
