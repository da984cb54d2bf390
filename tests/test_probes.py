"""`lrlab.probes`: the live-bytes counter and the host-synchronisation counter on small cases."""

import torch

from lrlab.probes import HostSyncs, LiveBytes


def test_live_bytes_counts_storages_until_they_are_freed():
    a = torch.ones(1000)
    with LiveBytes() as live:
        b = a * 2          # 4000 bytes
        c = b * 2          # 8000 live
        view = c[:10]      # no new storage
        del b              # 4000 live
        d = torch.ones(500, dtype=torch.float64)  # 8000 live
    assert live.peak == 8000 and live.now == 8000
    del c, view, d
    assert live.now == 0


def test_host_syncs_leave_out_tensors_made_on_the_host_on_purpose():
    t = torch.ones(())
    generator = torch.Generator().manual_seed(0)
    with HostSyncs() as syncs:
        int(torch.randint(5, (), generator=generator))
        float(torch.zeros((), device="cpu"))
        float(t)
    assert syncs.calls == ["__float__"] and syncs.callers == [__name__]
