"""The shape every controller shares: a per-object lock, a fresh read under it, and children
matched by owner UID.

Why each piece:
- The lock serialises the handlers, the resync loop and child events for one object, and is
  dropped when nobody holds or waits for it, so the table does not grow with every object
  ever seen.
- Whatever woke a reconcile (a Kopf event, a LIST in the resync loop, a child's event) may
  carry an old copy of the object. Reconciling from it can undo a newer edit (resume an
  object the user has just suspended), so every reconcile re-reads the object under the lock.
- Children are matched by the UID of their controller ownerReference, never by name or label
  alone: an object deleted and re-created under the same name must not adopt the old one's
  children while the garbage collector has yet to remove them.
- One error policy (`transient`): API faults are retried with backoff; a rejection (a
  validation error or an admission webhook's 400/403/404/422) is the user's spec, reported as
  a condition plus one Warning Event and retried only when something changes.
- One status writer (`write_status`): a merge patch of only the status fields a controller
  owns and that changed; Kopf keeps its own part of status.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from slipway import kube

_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
_waiters: dict[tuple[str, str, str], int] = {}


@asynccontextmanager
async def object_lock(kind: str, namespace: str, name: str) -> AsyncIterator[None]:
    """Hold the lock of one object; the entry is pruned when its last user leaves."""
    key = (kind, namespace, name)
    lock = _locks.setdefault(key, asyncio.Lock())
    _waiters[key] = _waiters.get(key, 0) + 1
    try:
        async with lock:
            yield
    finally:
        _waiters[key] -= 1
        if _waiters[key] == 0:
            del _waiters[key]
            _locks.pop(key, None)


def lock_count() -> int:
    """How many per-object locks exist now (for tests: they must not leak)."""
    return len(_locks)


async def fresh(api_version: str, kind: str, namespace: str,
                name: str) -> dict[str, Any] | None:
    """The object as the API server has it now; None when it is gone or being deleted."""
    obj = await kube.get(api_version, kind, namespace, name)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return None
    obj.setdefault("apiVersion", api_version)
    obj.setdefault("kind", kind)
    return obj


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The UID of *obj*'s controller ownerReference (None when it has none)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def owned_by(child: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """True when *owner* (by UID) is *child*'s controller."""
    uid = (owner.get("metadata") or {}).get("uid")
    return uid is not None and controller_uid(child) == uid


def owned(children: list[dict[str, Any]], owner: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The children whose controller is *owner*; same-named leftovers of a deleted
    predecessor (or objects nobody owns) are left alone."""
    return [c for c in children if owned_by(c, owner)]


def transient(exc: kube.KubeError) -> bool:
    """True for API faults that a retry can fix: no answer, a write conflict, throttling,
    server errors. False for rejections of what we sent, which only a new spec can fix."""
    return exc.status in (0, 409, 429) or exc.status >= 500


async def write_status(obj: Mapping[str, Any], new: Mapping[str, Any],
                       owned: Iterable[str]) -> dict[str, Any] | None:
    """Merge-patch the *owned* status fields of *obj* that differ from *new* (a None value
    deletes the field). Returns the patched object; None when nothing changed or it is gone."""
    old = obj.get("status") or {}
    changed = {k: new.get(k) for k in owned if old.get(k) != new.get(k)}
    if not changed:
        return None
    meta = obj["metadata"]
    try:
        return await kube.patch(obj["apiVersion"], obj["kind"], meta["namespace"],
                                meta["name"], {"status": changed}, subresource="status")
    except kube.KubeError as exc:
        if exc.status == 404:  # deleted meanwhile
            return None
        raise


APPLIED_HASH = "slipway.dev/applied-hash"


def stamped(manifest: dict[str, Any]) -> dict[str, Any]:
    """*manifest* with an annotation holding the hash of everything else in it, so a later
    reconcile can tell "nothing to apply" from "a field was dropped from the spec" (which
    server-side apply removes, and which `covers` alone cannot see)."""
    body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(body).hexdigest()[:16]
    meta = manifest["metadata"]
    return {**manifest, "metadata": {
        **meta, "annotations": {**(meta.get("annotations") or {}), APPLIED_HASH: digest}}}


def unchanged(live: Mapping[str, Any] | None, manifest: dict[str, Any]) -> bool:
    """True when applying *manifest* (from `stamped`) to *live* would change nothing: the
    same manifest was applied last and every field of it still holds."""
    return live is not None and covers(live, manifest)


async def apply_if_drifted(manifest: dict[str, Any],
                           live: dict[str, Any] | None) -> dict[str, Any]:
    """Server-side apply *manifest* (stamped here) unless *live*, the object as just read,
    already holds it; returns the object as it now is. A no-op PATCH per child per
    reconcile adds up at scale, and goes through every admission webhook."""
    manifest = stamped(manifest)
    if live is not None and unchanged(live, manifest):
        return live
    return await kube.apply(manifest)


def covers(live: Any, desired: Any) -> bool:
    """True when *live* already has every field *desired* sets, with the same value: applying
    *desired* would change nothing, so the PATCH is skipped. Fields the server or another
    controller added (defaults, status) are ignored; lists must match item by item. A value
    the server normalised (say "1000m" for "1") reads as drift, which only costs an apply."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            k in live and covers(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return isinstance(live, list) and len(live) == len(desired) and all(
            covers(a, b) for a, b in zip(live, desired, strict=True))
    return bool(live == desired)
