"""Operator settings from environment variables (the Helm chart sets them)."""

from __future__ import annotations

import os
import socket

from pydantic import BaseModel, Field


class Settings(BaseModel):
    namespace: str | None = Field(None, description="Watch one namespace; None = all.")
    leader_election: bool = Field(
        False, description="Lease-based leader election, for running several replicas: only "
                           "the holder of the Lease reconciles, the others wait as standby.")
    lease_name: str = "slipway-operator"
    lease_namespace: str = Field("default", description="Namespace of the leader Lease "
                                                        "(the operator's own).")
    identity: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
                          description="This replica's name in the Lease (the pod name).")
    liveness_port: int = 8080
    metrics_port: int = 9100
    json_logs: bool = False
    resync_seconds: float = Field(
        15.0, gt=0, description="How often the resync loop re-checks every object.")
    pod_reason_seconds: float = Field(
        60.0, gt=0, description="How long the workers of a TrainingJob may wait (to be scheduled, "
                          "to start) before their pods are read for the reason, shown as the "
                          "Pending reason with a Warning Event.")
    kserve_default_deployment_mode: str = "Standard"
    prometheus_url: str | None = Field(
        None, description="Prometheus the Canary analysis queries (SLIPWAY_PROMETHEUS_URL).")

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ

        def flag(name: str) -> bool:
            return env.get(name, "").lower() in ("1", "true", "yes")

        return cls(
            namespace=env.get("SLIPWAY_NAMESPACE") or None,
            leader_election=flag("SLIPWAY_LEADER_ELECTION"),
            lease_name=env.get("SLIPWAY_LEASE_NAME") or "slipway-operator",
            lease_namespace=env.get("SLIPWAY_LEASE_NAMESPACE") or env.get("POD_NAMESPACE")
            or "default",
            identity=env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
            liveness_port=int(env.get("SLIPWAY_LIVENESS_PORT", "8080")),
            metrics_port=int(env.get("SLIPWAY_METRICS_PORT", "9100")),
            json_logs=flag("SLIPWAY_JSON_LOGS"),
            resync_seconds=float(env.get("SLIPWAY_RESYNC_SECONDS", "15")),
            pod_reason_seconds=float(env.get("SLIPWAY_POD_REASON_SECONDS", "60")),
            kserve_default_deployment_mode=env.get("SLIPWAY_KSERVE_DEPLOYMENT_MODE", "Standard"),
            prometheus_url=env.get("SLIPWAY_PROMETHEUS_URL") or None,
        )


SETTINGS = Settings.from_env()

# The settings the running operator uses: SETTINGS unless `slipway run` overrode them.
_active: Settings = SETTINGS


def activate(settings: Settings) -> None:
    global _active
    _active = settings


def active() -> Settings:
    return _active
