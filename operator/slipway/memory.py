"""Keep the operator's resident memory close to what it holds.

CPython frees into glibc's malloc, and glibc keeps freed memory for reuse: by default in up to
eight arenas per core, one per thread that allocated, never handed back to the system while
a single live object sits on a page. The operator decodes API responses in up to 32 API
threads and several watch threads, so after a burst of thousands of objects its RSS stays at
the peak of the burst (measured: twice what its caches hold). Two arenas and a trim after each
resync tick keep it near the live size. Both are no-ops where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("slipway.memory")

M_ARENA_MAX = -8  # mallopt parameter (malloc.h)
ARENAS = 2


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap malloc's arenas; call before the threads start. False where it cannot."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Hand free heap pages back to the system; True when some were."""
    return bool(_LIBC.malloc_trim(0)) if _LIBC is not None else False
