"""Lease-based leader election, so several replicas never reconcile at once.

The scheme is client-go's (controller-runtime's), on a coordination.k8s.io/v1 Lease:
- a replica holds the Lease by renewing `spec.renewTime` every `renew_seconds`;
- a standby takes it over only when it has seen the Lease record unchanged for
  `leaseDurationSeconds` by its own clock (never by comparing clocks across machines);
- every write is a compare-and-swap on resourceVersion, so two standbys cannot both win;
- a leader that could not renew for `renew_deadline` seconds stops at once (the process exits
  and the pod restarts as a standby): it may no longer be the only one reconciling;
- a leader that stops cleanly releases the Lease, so the standby takes over without waiting.

Why not Kopf peering: Kopf peering pauses lower-priority operators, but replicas of one
Deployment share a priority and then all of them freeze. Kopf has no leader election.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from slipway import kube

log = logging.getLogger("slipway.leader")
API_VERSION, KIND = "coordination.k8s.io/v1", "Lease"


def micro_now() -> str:
    """A MicroTime, the format of Lease times."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Elector:
    name: str
    namespace: str
    identity: str
    lease_seconds: int = 15
    renew_seconds: float = 2.0
    renew_deadline: float = 10.0
    retry_seconds: float = 2.0
    on_attempt: Callable[[], None] = lambda: None
    # The Lease record last seen (holder, renewTime) and when, by our monotonic clock.
    _seen: tuple[Any, Any] | None = None
    _seen_at: float = field(default_factory=time.monotonic)

    def _lease(self, old: dict[str, Any] | None, spec: dict[str, Any]) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if old is not None:
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}

    async def try_acquire(self) -> bool:
        """One attempt to take or renew the Lease; True when we hold it afterwards."""
        self.on_attempt()
        lease = await kube.get(API_VERSION, KIND, self.namespace, self.name)
        now = micro_now()
        mine = {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_seconds,
                "renewTime": now}
        if lease is None:
            try:
                await kube.create(self._lease(None, {**mine, "acquireTime": now,
                                                     "leaseTransitions": 0}))
            except kube.KubeError as exc:
                if exc.status == 409:  # another replica created it first
                    return False
                raise
            log.info(f"{self.identity} acquired the Lease {self.namespace}/{self.name}")
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        record = (holder, spec.get("renewTime"))
        if record != self._seen:
            self._seen, self._seen_at = record, time.monotonic()
        duration = spec.get("leaseDurationSeconds") or self.lease_seconds
        if holder and holder != self.identity \
                and time.monotonic() - self._seen_at < duration:
            return False  # held, and renewed recently enough by what we have seen
        taking_over = holder != self.identity
        new = {**spec, **mine}
        if taking_over:
            new["acquireTime"] = now
            new["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        try:
            await kube.replace(self._lease(lease, new))
        except kube.KubeError as exc:
            if exc.status == 409:  # someone else wrote it first: they win this round
                return False
            raise
        if taking_over:
            log.info(f"{self.identity} took over the Lease {self.namespace}/{self.name} "
                     f"from {holder or 'nobody'}")
        return True

    async def acquire(self) -> None:
        """Wait as a standby until this replica holds the Lease."""
        while True:
            try:
                if await self.try_acquire():
                    return
            except kube.KubeError as exc:
                log.warning(f"leader election: {exc}")
            await asyncio.sleep(self.retry_seconds)

    async def keep(self, on_lost: Callable[[], None]) -> None:
        """Renew the Lease forever; call *on_lost* when renewing failed for too long."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_seconds)
            try:
                if await self.try_acquire():
                    renewed = time.monotonic()
                    continue
                log.error("another replica holds the Lease now")
            except kube.KubeError as exc:
                log.warning(f"renewing the Lease failed: {exc}")
            if time.monotonic() - renewed > self.renew_deadline:
                on_lost()
                return

    async def release(self) -> None:
        """Hand the Lease back on a clean stop, so a standby need not wait it out."""
        try:
            lease = await kube.get(API_VERSION, KIND, self.namespace, self.name)
            spec = (lease or {}).get("spec") or {}
            if lease is None or spec.get("holderIdentity") != self.identity:
                return
            await kube.replace(self._lease(lease, {
                **spec, "holderIdentity": None, "leaseDurationSeconds": 1,
                "renewTime": micro_now()}))
            log.info(f"{self.identity} released the Lease")
        except kube.KubeError as exc:
            log.warning(f"releasing the Lease failed (a standby takes over after it "
                        f"expires): {exc}")
