"""Keep the operator's resident memory close to what it holds.

CPython frees into glibc's malloc, and glibc keeps freed memory for reuse: by default in up to
eight arenas per core, one per thread that allocated, never handed back to the system while
a single live object sits on a page. The operator decodes API responses in up to 32 API
threads and several watch threads, so after a burst of thousands of objects its RSS stays at
the peak of the burst (measured: twice what its caches hold). One arena (threads allocate
under the GIL, so they seldom contend for it) and a trim after each resync tick keep it
nearer the live size. Both are no-ops where libc is not glibc. Measured at 10,000 objects on
malloc: 155.3 MiB RSS at idle with two arenas, 153.3 MiB with one (its 24 MB of mmapped
arena gone, the main heap the larger).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import tempfile
import tracemalloc
from collections.abc import Mapping

log = logging.getLogger("slipway.memory")

M_ARENA_MAX = -8  # mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
ARENAS = 1
# Allocations this large or larger get their own mapping, handed back when freed. glibc's
# default starts at 128 KiB but rises to the size of any mapped block freed (up to 32 MiB):
# after the first LIST response is freed, the next ones (megabytes each) land in the heap,
# and the small objects that live on after them pin the heap's top. Setting it fixes it.
MMAP_THRESHOLD = 128 * 1024


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def tune_malloc(arenas: int = ARENAS, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Cap malloc's arenas and fix its mmap threshold; call before the threads start. False
    where it cannot."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return False
    # Both are set whatever the other's outcome (`and` would skip the second).
    capped = bool(_LIBC.mallopt(M_ARENA_MAX, arenas))
    fixed = bool(_LIBC.mallopt(M_MMAP_THRESHOLD, mmap_threshold))
    return capped and fixed


def use_system_malloc(argv: list[str] | None = None) -> None:
    """Run the operator on glibc's malloc instead of Python's small-object allocator: start
    the process again with PYTHONMALLOC=malloc, unless PYTHONMALLOC is set (to anything).

    pymalloc carves small objects out of 1 MiB arenas and gives an arena back only when every
    object in it is gone. A burst's short-lived objects and the caches' long-lived ones share
    arenas, so after a burst the arenas stay resident, mostly empty: at 10,000 objects, 45 MB
    free inside 117 arenas against 41 MB used. glibc's malloc_trim (`trim`) returns free
    pages one at a time. Measured at 3,000 objects: 110.0 MiB RSS at idle with pymalloc,
    100.7 MiB with malloc; idle CPU 0.29 against 0.39 CPU-seconds a minute. The image sets
    PYTHONMALLOC itself, so it never starts twice.
    """
    if "PYTHONMALLOC" in os.environ:
        return
    # sys.orig_argv keeps the interpreter's own flags (-X, -W) and how it was started (a
    # console script, -m); *argv* (tests) runs `python -m slipway.cli ARGV`.
    args = (list(sys.orig_argv) if argv is None
            else [sys.executable, "-m", "slipway.cli", *argv])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, {**os.environ, "PYTHONMALLOC": "malloc"})


def trim() -> bool:
    """Hand free heap pages back to the system; True when some were."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def malloc_stats() -> dict[str, int]:
    """glibc malloc's own account, in KiB: the heap it took from the system, the part of it
    in use and free (free pages handed back by `trim` count as free, not resident), and the
    blocks mapped on their own. In use far below the heap's RSS means fragmentation; close
    to it, memory really held (by Python or by C libraries). Empty where it cannot tell."""
    if _LIBC is None or not hasattr(_LIBC, "mallinfo2"):
        return {}
    _LIBC.mallinfo2.restype = _MallInfo2
    info = _LIBC.mallinfo2()
    return {"heap_kib": info.arena // 1024, "used_kib": info.uordblks // 1024,
            "free_kib": info.fordblks // 1024, "mapped_kib": info.hblkhd // 1024,
            "mapped_blocks": info.hblks}


def report_from_env(env: Mapping[str, str] = os.environ) -> bool:
    """SIGUSR2 writes a memory report when SLIPWAY_MEMORY_REPORT=<file> ("-": stderr) is set.

    The report says where the resident memory sits (heap, anonymous mappings, thread stacks,
    libraries) and, with SLIPWAY_TRACEMALLOC=<frames> as well, which lines hold the most
    Python memory: memory at scale is measured in the live operator, not guessed. Tracing
    slows the process; both are off unless asked for.
    """
    out = env.get("SLIPWAY_MEMORY_REPORT")
    if not out:
        return False
    frames = int(env.get("SLIPWAY_TRACEMALLOC", "0") or "0")
    if frames > 0:
        tracemalloc.start(frames)
    signal.signal(signal.SIGUSR2, lambda *_: _write_report(None if out == "-" else out))
    return True


def report(top: int = 40) -> str:
    """Resident memory by kind of mapping, then (when tracing) the lines holding the most."""
    trim()
    lines = [f"rss_kib={_rss_kib()} " + " ".join(
        f"{kind}_kib={kib}" for kind, kib in sorted(mappings().items(), key=lambda kv: -kv[1])),
             # (empty while tracing: tracemalloc stands between Python and pymalloc)
             " ".join(f"{k}={v}" for k, v in pymalloc().items()),
             "malloc " + " ".join(f"{k}={v}" for k, v in malloc_stats().items())]
    if not tracemalloc.is_tracing():
        return "\n".join(lines) + "\n"
    traced, peak = tracemalloc.get_traced_memory()
    lines.append(f"traced_kib={traced // 1024} peak_kib={peak // 1024}")
    stats = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]).statistics("traceback")
    for stat in stats[:top]:
        lines.append(f"{stat.size // 1024} KiB in {stat.count} blocks")
        lines += [f"    {frame}" for frame in stat.traceback.format()[-2 * 4:]]
    return "\n".join(lines) + "\n"


def mappings(smaps: str = "/proc/self/smaps") -> dict[str, int]:
    """Resident KiB by kind: heap (brk), stack, anon (mmap: Python arenas, big buffers,
    thread stacks), lib (shared objects and other files). Empty where /proc is absent."""
    kinds: dict[str, int] = {}
    kind = "anon"
    try:
        with open(smaps) as f:
            for line in f:
                head = line.split()
                if not head:
                    continue
                if "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
                    name = head[5] if len(head) > 5 else ""
                    kind = ("heap" if name == "[heap]" else "stack" if name == "[stack]"
                            else "anon" if not name or name.startswith("[anon") else
                            "vdso" if name.startswith("[") else "lib")
                elif head[0] == "Rss:":
                    kinds[kind] = kinds.get(kind, 0) + int(head[1])
    except OSError:
        return {}
    return kinds


_PYMALLOC = {"# arenas allocated current": "arenas", "# arenas highwater mark": "arenas_peak",
             "# bytes in allocated blocks": "used_kib",
             "# bytes in available blocks": "free_kib"}


def pymalloc() -> dict[str, int]:
    """Python's small-object allocator: its 1 MiB arenas now and at most, and the KiB of
    their blocks in use and free. Free blocks in arenas that cannot be released (one live
    object each is enough) are what fragmentation costs."""
    with tempfile.TemporaryFile("w+") as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)  # _debugmallocstats writes to the C stderr
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read()
    stats: dict[str, int] = {}
    for line in text.splitlines():
        head, _, value = line.partition("=")
        name = _PYMALLOC.get(head.strip())
        if name and value.strip():
            number = int(value.strip().replace(",", ""))
            stats[name] = number // 1024 if name.endswith("_kib") else number
    return stats


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _write_report(path: str | None) -> None:
    text = report()
    if path:
        with open(path, "a") as f:
            f.write(text + "\n")
    else:
        sys.stderr.write(text)
