"""Which objects the resync tick may leave alone: those with nothing left to do.

The resync loop is a safety net for missed events; reconciling every object on every tick
costs a GET and one or more LISTs per object (10,000 objects: tens of thousands of requests
a minute, at idle). An object whose last full reconcile ended in a steady phase (a Running
TrainingJob, a Ready ModelDeployment) is remembered with the resourceVersion it had then.
While the LIST shows that same resourceVersion, nothing of it has changed, and its children's
changes wake it by their own events (a Job's, an InferenceService's), which reconcile it and
refresh the entry. Anything else (a spec edit, a status write by someone else, a phase that
waits on something without an event, an operator restart) means a full reconcile.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

# kind -> uid -> (resourceVersion after its last reconcile, monotonic time until which the
# tick may skip it; None: for as long as the resourceVersion holds)
_memo: dict[str, dict[str, tuple[str, float | None]]] = {}


def _key(obj: Mapping[str, Any]) -> tuple[str | None, str | None]:
    meta = obj.get("metadata") or {}
    return meta.get("uid"), meta.get("resourceVersion")


def mark(kind: str, obj: Mapping[str, Any], for_seconds: float | None = None) -> None:
    """*obj* (as written or read last) needs nothing until it or a child changes; with
    *for_seconds*, only for that long. The latter is for an object still waiting on
    something (a Pending TrainingJob) that was reconciled just now: at a burst of a thousand
    jobs, the tick would otherwise reconcile each of them again on top of its events."""
    uid, rv = _key(obj)
    if uid and rv:
        until = None if for_seconds is None else time.monotonic() + for_seconds
        _memo.setdefault(kind, {})[uid] = (rv, until)


def forget(kind: str, obj: Mapping[str, Any]) -> None:
    """*obj* still waits on something: the resync tick must look at it again."""
    uid, _ = _key(obj)
    if uid:
        _memo.get(kind, {}).pop(uid, None)


def is_settled(kind: str, obj: Mapping[str, Any]) -> bool:
    """True when *obj* (from a LIST) is exactly as its last settled reconcile left it."""
    uid, rv = _key(obj)
    entry = _memo.get(kind, {}).get(uid) if uid is not None else None
    if entry is None or rv is None or entry[0] != rv:
        return False
    return entry[1] is None or time.monotonic() < entry[1]


def prune(kind: str, live_uids: set[str]) -> None:
    """Drop the entries of deleted objects of *kind*; *live_uids* is what a full LIST of
    the kind returned."""
    entries = _memo.get(kind, {})
    for uid in set(entries) - live_uids:
        del entries[uid]


def size() -> int:
    return sum(len(entries) for entries in _memo.values())


def clear() -> None:
    _memo.clear()
