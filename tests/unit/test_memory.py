"""slipway.memory against this process's real glibc (no mocks: it is a libc call)."""

from __future__ import annotations

from slipway import memory


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_trim_hands_freed_heap_back() -> None:
    if memory._LIBC is None:  # not glibc: documented as a no-op
        assert memory.trim() is False
        return
    # Many small objects (pymalloc arenas and malloc'd blocks), freed again except every
    # 64th, so that the heap cannot shrink from the top by itself.
    junk = [bytearray(1500) for _ in range(60_000)]
    keep = junk[::64]
    before = _rss_kib()
    del junk
    freed = _rss_kib()
    assert memory.trim() is True
    after = _rss_kib()
    assert after < freed - 20_000, (before, freed, after)  # at least ~20 MiB handed back
    assert len(keep) == 938  # still alive: the pages they sit on stay
