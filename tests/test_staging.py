import numpy as np
import pytest
import torch

from inspector.staging import StagingRing


def test_ring_reuses_buffers_in_order_cpu() -> None:
    ring = StagingRing(3, 2, 4, 5, "cpu")
    ptrs = [s.host.data_ptr() for s in ring.slots]
    seen = []
    for k in range(7):
        slot = ring.acquire(timeout=1)
        slot.frame(0)[...] = k
        view = ring.upload(slot, 1)
        assert view.data_ptr() == slot.host.data_ptr()  # CPU: no copy
        assert int(view[0, 0, 0, 0]) == k
        seen.append(slot.index)
        ring.release(slot)
    assert seen == [0, 1, 2, 0, 1, 2, 0]
    assert [s.host.data_ptr() for s in ring.slots] == ptrs  # never reallocated


def test_ring_blocks_when_all_in_flight() -> None:
    import queue

    ring = StagingRing(2, 1, 2, 2, "cpu")
    a, b = ring.acquire(), ring.acquire()
    with pytest.raises(queue.Empty):
        ring.acquire(timeout=0.05)
    ring.release(a)
    assert ring.acquire(timeout=1) is a
    del b


@pytest.mark.gpu
def test_ring_pinned_and_ordered_on_cuda() -> None:
    ring = StagingRing(3, 4, 256, 1600, "cuda")
    assert all(s.host.is_pinned() for s in ring.slots)
    out = []
    for k in range(6):
        slot = ring.acquire(timeout=1)
        for i in range(4):
            slot.frame(i)[...] = (k * 4 + i) % 256
        dev = ring.upload(slot, 4)
        torch.cuda.current_stream().wait_event(slot.ready)  # the engine stream's wait, as in the pipeline
        out.append(dev.float().mean(dim=(1, 2, 3)).cpu())
        consumed = torch.cuda.Event()
        consumed.record()
        ring.release(slot, after=consumed)  # handed out again only once this stream has read it
    torch.cuda.synchronize()
    assert np.array_equal(torch.stack(out).numpy().ravel(), np.arange(24, dtype=np.float32))


def test_compact_closes_the_holes_of_rejected_frames() -> None:
    ring = StagingRing(2, 4, 2, 3, "cpu")
    slot = ring.acquire()
    for i in range(4):
        slot.frame(i)[...] = i
    slot.compact([1, 3])  # frames 0 and 2 were rejected by the decoder
    assert [int(slot.frame(i)[0, 0]) for i in range(2)] == [1, 3]
