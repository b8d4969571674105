"""slipway.memory against this process's real glibc (no mocks: it is a libc call)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from slipway import memory


def test_trim_hands_freed_heap_back() -> None:
    if memory._LIBC is None:  # not glibc: documented as a no-op
        assert memory.trim() is False
        return
    # Many small objects (pymalloc arenas and malloc'd blocks), freed again except every
    # 64th, so that the heap cannot shrink from the top by itself.
    junk = [bytearray(1500) for _ in range(60_000)]
    keep = junk[::64]
    before = memory._rss_kib()
    del junk
    freed = memory._rss_kib()
    assert memory.trim() is True
    after = memory._rss_kib()
    assert after < freed - 20_000, (before, freed, after)  # at least ~20 MiB handed back
    assert len(keep) == 938  # still alive: the pages they sit on stay


def test_report_names_the_line_that_holds_the_memory() -> None:
    import tracemalloc

    tracemalloc.start(4)
    try:
        held = [bytes(2000) + bytes([i % 256]) for i in range(5_000)]  # ~10 MB, this line
        text = memory.report(top=5)
    finally:
        tracemalloc.stop()
    first = text.splitlines()
    assert first[0].startswith("rss_kib="), text
    # [1]: pymalloc, silent while tracing; [2]: glibc malloc's account
    assert first[2].startswith("malloc"), text
    assert first[3].startswith("traced_kib="), text
    largest = text.split(" KiB in ")[1]  # the first entry, up to the next one's size
    assert "test_memory.py" in largest, text
    assert int(first[4].split()[0]) >= 9_000, text  # KiB of the largest entry
    assert len(held) == 5_000


def test_report_is_off_unless_asked() -> None:
    assert memory.report_from_env({}) is False
    assert memory.report_from_env({"SLIPWAY_TRACEMALLOC": "5"}) is False


def test_mappings_account_for_the_resident_memory() -> None:
    kinds = memory.mappings()
    if not kinds:  # no /proc
        return
    assert kinds.get("lib", 0) > 1_000, kinds  # the interpreter's own shared objects
    before = kinds.get("anon", 0) + kinds.get("heap", 0)
    block = bytearray(64 << 20)  # a large block is its own anonymous mmap
    block[::4096] = b"x" * len(block[::4096])  # touched: resident
    kinds = memory.mappings()
    assert kinds.get("anon", 0) + kinds.get("heap", 0) >= before + 60_000, kinds
    assert sum(kinds.values()) <= memory._rss_kib() + 1_000  # smaps agrees with VmRSS
    del block


def test_pymalloc_counts_small_objects_in_its_arenas() -> None:
    before = memory.pymalloc()
    small = [str(i) * 3 for i in range(200_000)]  # ~60-byte objects: pymalloc's, not malloc's
    after = memory.pymalloc()
    assert after["used_kib"] >= before["used_kib"] + 8_000, (before, after)
    assert after["arenas"] > before["arenas"] and after["arenas_peak"] >= after["arenas"]
    assert len(small) == 200_000


def test_use_system_malloc_starts_the_command_again_unless_pythonmalloc_is_set() -> None:
    code = ("import sys; from slipway import memory; memory.use_system_malloc(['version']); "
            "print('not restarted')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONMALLOC"}
    restarted = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                               text=True, check=True).stdout
    version = subprocess.run([sys.executable, "-m", "slipway.cli", "version"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert restarted == version and "not restarted" not in restarted
    kept = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONMALLOC": "pymalloc"},
                          capture_output=True, text=True, check=True).stdout
    assert kept == "not restarted\n"


def test_malloc_stats_tell_used_from_free() -> None:
    code = ("import json; from slipway import memory\n"
            "before = memory.malloc_stats()\n"
            "held = [bytes(1000) for _ in range(20_000)]\n"  # 20 MB in small blocks
            "during = memory.malloc_stats()\n"
            "del held[::2]\n"  # every other block: free, but scattered among used ones
            "after = memory.malloc_stats()\n"
            "print(json.dumps([before, during, after]))")
    env = {**os.environ, "PYTHONMALLOC": "malloc"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    before, during, after = json.loads(out)
    assert during["used_kib"] >= before["used_kib"] + 19_000
    assert after["free_kib"] >= during["free_kib"] + 9_000
    assert after["used_kib"] <= during["used_kib"] - 9_000
