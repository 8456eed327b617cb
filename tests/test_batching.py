from inspector.batching import Batcher


class FakeSource:
    """Arrivals at given times; read blocks on a fake clock, as XREADGROUP BLOCK would."""

    def __init__(self, arrivals: list[float]) -> None:
        self.arrivals = sorted(arrivals)
        self.now = 0.0
        self.taken = 0

    def clock(self) -> float:
        return self.now

    def read(self, count: int, block_ms: int | None) -> list[float]:
        ready = [t for t in self.arrivals[self.taken:] if t <= self.now]
        if not ready and block_ms:
            upcoming = self.arrivals[self.taken:self.taken + 1]
            if upcoming and upcoming[0] <= self.now + block_ms / 1000:
                self.now = upcoming[0]
                ready = [upcoming[0]]
            else:
                self.now += block_ms / 1000
        got = ready[:count]
        self.taken += len(got)
        return got


def test_closes_at_size() -> None:
    src = FakeSource([0.0] * 10)
    b = Batcher(4, 50, 500, src.clock)
    assert len(b.collect(src.read)) == 4
    assert src.now == 0.0  # no waiting when frames are there


def test_closes_at_deadline() -> None:
    src = FakeSource([0.0, 0.010, 0.200])
    b = Batcher(8, 50, 500, src.clock)
    assert b.collect(src.read) == [0.0, 0.010]
    assert 0.049 <= src.now <= 0.051  # waited out max_wait after the first frame, not longer


def test_idle_returns_empty_after_block() -> None:
    src = FakeSource([])
    b = Batcher(8, 50, 300, src.clock)
    assert b.collect(src.read) == []
    assert abs(src.now - 0.3) < 1e-9


def test_zero_wait_takes_what_is_there() -> None:
    src = FakeSource([0.0, 0.0, 0.001])
    assert Batcher(8, 0, 100, src.clock).collect(src.read) == [0.0, 0.0]
