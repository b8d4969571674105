"""`/healthz` (liveness) and `/readyz` (readiness) of the operator process.

Liveness means "this process still does its job", so it is tied to loops that must keep
turning: the leader election loop on a standby, the resync loop on the active replica. A loop
that has not turned for `stale_after` seconds (a deadlock, a hung API call outside every
timeout) fails liveness and the kubelet restarts the pod. Kopf's own watches restart
themselves on their server and client timeouts (see runner.py).

Readiness answers 200 for both roles and says which one in the body. A standby that reported
not-ready would stall every rolling update of a two-replica Deployment: the new pod starts as
standby and would never become "ready".
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

ACTIVE, STANDBY, STARTING = "active", "standby", "starting"


@dataclass
class Health:
    role: str = STARTING
    stale_after: float = 180.0
    beats: dict[str, float] = field(default_factory=dict)

    def beat(self, loop: str) -> None:
        """Record that *loop* made progress now."""
        self.beats[loop] = time.monotonic()

    def forget(self, loop: str) -> None:
        self.beats.pop(loop, None)

    def stuck(self) -> list[str]:
        """The loops that have not made progress for `stale_after` seconds."""
        now = time.monotonic()
        return sorted(name for name, at in self.beats.items() if now - at > self.stale_after)


HEALTH = Health()


async def _healthz(_: web.Request) -> web.Response:
    stuck = HEALTH.stuck()
    if stuck:
        return web.Response(status=500, text=f"stuck: {', '.join(stuck)}\n")
    return web.Response(text=f"ok ({HEALTH.role})\n")


async def _readyz(_: web.Request) -> web.Response:
    return web.Response(text=f"{HEALTH.role}\n")


async def serve(port: int) -> web.AppRunner:
    """Start the health endpoints on *port* (all interfaces); returns the runner to stop."""
    app = web.Application()
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
