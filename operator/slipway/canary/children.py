"""What a Canary's status means for the objects that serve traffic (pure, no I/O).

The status is the truth; these functions turn it into desired children, so that the
controller converges them level-based at every turn and an operator restart mid-rollout
rebuilds the same weights instead of jumping to 0 or 100.

Two routers, picked from the ModelDeployment's deployment mode:
- Standard (Gateway API): the canary version gets its own InferenceService `<md>-canary`
  answering to the same model name, and an HTTPRoute `<md>-split` splits the model's host
  between the two predictor Services by weight.
- Knative: KServe's own `canaryTrafficPercent` on the ModelDeployment's one InferenceService
  (the new model with N% of traffic; promote = drop the field; roll back = the stable model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from slipway.api.canary import CanaryStatus
from slipway.api.common import get_condition
from slipway.api.modeldeployment import ModelDeploymentSpec, ResolvedModel
from slipway.builders import inferenceservice as isvc_builder
from slipway.builders.meta import child_metadata
from slipway.canary.machine import ACTIVE
from slipway.status.predictor import pod_ready

ROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
ROUTE_KIND = "HTTPRoute"
# The Gateway KServe's own routes attach to (its inferenceservice-config default).
DEFAULT_GATEWAY = ("kserve", "kserve-ingress-gateway")
ROLE_LABEL = "slipway.dev/canary-role"

Mode = Literal["Standard", "Knative"]
# Phases in which the canary version is deployed (as a second InferenceService or revision).
DEPLOYED = (*ACTIVE, "Promoting")


def canary_isvc_name(md_name: str) -> str:
    return f"{md_name}-canary"


def route_name(md_name: str) -> str:
    return f"{md_name}-split"


def predictor_service(isvc_name: str) -> str:
    """The Service KServe's Standard mode puts in front of the predictor pods."""
    return f"{isvc_name}-predictor"


def mode_of(spec: ModelDeploymentSpec, default_mode: str) -> Mode:
    return "Knative" if (spec.deployment_mode or default_mode) == "Knative" else "Standard"


@dataclass(frozen=True)
class Pin:
    """What the ModelDeployment's own InferenceService must serve while a Canary governs it."""

    model: ResolvedModel
    canary_traffic_percent: int | None = None


def pinned(status: CanaryStatus, mode: Mode) -> Pin | None:
    """The model the ModelDeployment's InferenceService serves under this Canary; None when the
    Canary has not adopted a stable model yet (the ModelDeployment deploys its own)."""
    if status.stable_model is None:
        return None
    canary = status.canary_model
    if canary is not None and status.phase == "Promoting":
        return Pin(canary)  # Knative: promote = drop canaryTrafficPercent
    if canary is not None and mode == "Knative" and status.phase in ACTIVE:
        return Pin(canary, status.canary_weight or 0)
    return Pin(status.stable_model)


def wants_canary_isvc(status: CanaryStatus, mode: Mode) -> bool:
    return mode == "Standard" and status.canary_model is not None and status.phase in DEPLOYED


def wants_route(status: CanaryStatus, mode: Mode) -> bool:
    """A split route while the canary takes traffic (or is being promoted at its weight)."""
    return (wants_canary_isvc(status, mode) and (status.canary_weight or 0) > 0
            and status.phase in ("Progressing", "Paused", "Promoting"))


def build_canary_isvc(md_spec: ModelDeploymentSpec, md: dict[str, Any], canary: dict[str, Any],
                      model: ResolvedModel, default_mode: str) -> dict[str, Any]:
    """The canary's InferenceService: the ModelDeployment's shape with the canary model, owned
    by the Canary (deleting the Canary removes it) and answering to the ModelDeployment's
    model name, so one URL path works on both backends."""
    md_name = md["metadata"]["name"]
    out = isvc_builder.build_inference_service(md_spec, md, model, default_mode)
    labels = {**out["metadata"]["labels"], ROLE_LABEL: "canary"}
    meta = child_metadata(canary, canary_isvc_name(md_name), extra_labels=labels,
                          annotations=out["metadata"].get("annotations"))
    out["metadata"] = meta
    container = out["spec"]["predictor"]["model"]
    container["args"] = [f"--model_name={md_name}"]
    return out


def model_host(md_status: dict[str, Any]) -> str | None:
    """The host clients call: the one KServe gave the ModelDeployment's InferenceService."""
    url = md_status.get("url")
    return urlsplit(url).hostname if url else None


def build_route(canary: dict[str, Any], md_name: str, host: str, weight: int,
                gateway: tuple[str, str] = DEFAULT_GATEWAY) -> dict[str, Any]:
    """The HTTPRoute that splits *host* between the stable and the canary predictor."""
    return {
        "apiVersion": ROUTE_API_VERSION, "kind": ROUTE_KIND,
        "metadata": child_metadata(canary, route_name(md_name)),
        "spec": {
            "hostnames": [host],
            "parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                            "namespace": gateway[0], "name": gateway[1]}],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [
                    {"name": predictor_service(md_name), "port": 80, "weight": 100 - weight},
                    {"name": predictor_service(canary_isvc_name(md_name)), "port": 80,
                     "weight": weight},
                ]}],
        },
    }


def _isvc_serves(isvc: dict[str, Any] | None, version: str) -> bool:
    """KServe has reconciled this InferenceService's current spec, which carries *version*,
    and reports it Ready."""
    if not isvc:
        return False
    meta, status = isvc["metadata"], isvc.get("status") or {}
    if (meta.get("annotations") or {}).get(isvc_builder.VERSION_KEY) != version:
        return False
    if status.get("observedGeneration") not in (None, meta.get("generation")):
        return False
    ready = get_condition(status.get("conditions"), "Ready")
    return bool(ready and ready.get("status") == "True")


def pod_version(pod: dict[str, Any]) -> str | None:
    """The MODEL_VERSION a predictor pod was started with (the builder sets it)."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == "MODEL_VERSION":
                return str(env.get("value"))
    return None


def pods_serve(pods: list[dict[str, Any]], version: str) -> bool:
    """Every live predictor pod runs *version* and one is Ready: a rolling update is over."""
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    return (bool(live) and all(pod_version(p) == version for p in live)
            and any(pod_ready(p) for p in live))


def knative_revision_ready(isvc: dict[str, Any] | None) -> bool:
    predictor = (((isvc or {}).get("status") or {}).get("components") or {}).get("predictor")
    if not predictor:
        return False
    latest = predictor.get("latestCreatedRevision")
    return bool(latest) and latest == predictor.get("latestReadyRevision")


def canary_ready(mode: Mode, version: str, canary_isvc: dict[str, Any] | None,
                 md_isvc: dict[str, Any] | None) -> bool:
    """Whether the canary version can take traffic."""
    if mode == "Knative":
        return _isvc_serves(md_isvc, version) and knative_revision_ready(md_isvc)
    return _isvc_serves(canary_isvc, version)


def stable_serves(version: str, md_isvc: dict[str, Any] | None,
                  pods: list[dict[str, Any]], mode: Mode) -> bool:
    """Whether the ModelDeployment's own InferenceService now serves *version* everywhere
    (the end of a promotion)."""
    if not _isvc_serves(md_isvc, version):
        return False
    if mode == "Knative":
        return knative_revision_ready(md_isvc)
    return pods_serve(pods, version)
