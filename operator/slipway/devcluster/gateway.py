"""A STAND-IN for a Gateway API implementation (Envoy Gateway, Istio, ...) AND for an
ingress controller (ingress-nginx, ...) on the dev cluster.

It exists because this machine has no gateway data plane (no pod network, no Envoy, no
nginx), yet requests must reach model servers by the cluster's routing objects: KServe in
Standard mode with `enableGatewayApi: false` creates one networking.k8s.io/v1 Ingress per
InferenceService (class `slipway-local`), and Slipway's canaries need a proxy that honours
HTTPRoute weights. This process is that proxy: it watches GatewayClasses, Gateways,
HTTPRoutes, IngressClasses, Ingresses, Services, EndpointSlices and Pods, writes the status
a real implementation would (HTTPRoute/Gateway/GatewayClass conditions, Ingress
status.loadBalancer), and forwards HTTP/1.1 requests arriving on one loopback port by the
Gateway API and Ingress rules.

Ingresses are ours when their IngressClass (spec.ingressClassName, else the legacy
`kubernetes.io/ingress.class` annotation, else our default IngressClass) has
`spec.controller: slipway.dev/local-gateway`. Both kinds share one route table, and
HTTPRoutes win over Ingresses for an equally specific hostname: a canary's HTTPRoute for a
model's host thereby takes over from the Ingress KServe made for that host (requests the
HTTPRoute does not match still fall through to the Ingress).

    python -m slipway.devcluster.gateway --kubeconfig PATH --port PORT \
        [--host 127.0.0.1] [--health-port PORT]

Deliberately small, so not covered: TLS (HTTPS listeners are not Accepted), listener
ports (one port serves every listener), RequestRedirect/RequestMirror/ExtensionRef filters
(routes using them are not Accepted), ReferenceGrants (cross-namespace backendRefs are
allowed), namespace selectors on listeners (treated as "All"), retries beyond one retry
on a failed connection, WebSocket upgrades; for Ingresses: TLS, `resource` backends and
controller-specific annotations (ImplementationSpecific paths are treated as Prefix).
Pods run as local processes by the pod runner carry LOOPBACK_PORTS_ANNOTATION; their fake
pod IPs are never contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import signal
import ssl
import sys
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from multidict import CIMultiDict
from yarl import URL

CONTROLLER_NAME = "slipway.dev/local-gateway"
LOOPBACK_PORTS_ANNOTATION = "slipway.dev/loopback-ports"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
GATEWAY_GROUP = "gateway.networking.k8s.io"
INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"  # legacy, before ingressClassName
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
BACKEND_HEADER = "x-slipway-backend"  # response header naming the Service that answered

log = logging.getLogger("slipway.gateway")

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects

# plural -> (apiVersion, kind, list query); watched in all namespaces.
RESOURCES: dict[str, tuple[str, str, dict[str, str]]] = {
    "gatewayclasses": (f"{GATEWAY_GROUP}/v1", "GatewayClass", {}),
    "gateways": (f"{GATEWAY_GROUP}/v1", "Gateway", {}),
    "httproutes": (f"{GATEWAY_GROUP}/v1", "HTTPRoute", {}),
    "ingressclasses": ("networking.k8s.io/v1", "IngressClass", {}),
    "ingresses": ("networking.k8s.io/v1", "Ingress", {}),
    "services": ("v1", "Service", {}),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice",
                       {"labelSelector": SERVICE_NAME_LABEL}),
    "pods": ("v1", "Pod", {}),
}
ROUTING_KINDS = {"gatewayclasses", "gateways", "httproutes", "ingressclasses", "ingresses"}
BACKEND_KINDS = {"services", "endpointslices", "pods"}
STATUS_KINDS = ROUTING_KINDS | {"services"}

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                        "upgrade"})
SUPPORTED_FILTERS = {"RequestHeaderModifier", "ResponseHeaderModifier", "URLRewrite"}
BUFFER_LIMIT = 1 << 20  # bodies up to this size are buffered (replayable); larger ones stream


# ---------------------------------------------------------------- pure helpers

def resource_path(plural: str, namespace: str = "", name: str = "") -> str:
    api_version = RESOURCES[plural][0]
    base = f"/api/{api_version}" if api_version == "v1" else f"/apis/{api_version}"
    parts = [base, f"namespaces/{namespace}" if namespace else "", plural, name]
    return "/".join(p for p in parts if p)


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata", {})
    return meta.get("namespace", ""), meta["name"]


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def strip_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")


def hostname_matches(pattern: str, host: str) -> bool:
    """Gateway API hostname match: `*.example.com` matches any deeper name, not example.com."""
    pattern, host = pattern.lower(), host.lower()
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def ingress_host_matches(pattern: str, host: str) -> bool:
    """Ingress host match: `*.example.com` matches exactly one more label (a.example.com),
    neither example.com nor a.b.example.com."""
    pattern, host = pattern.lower(), host.lower()
    if pattern.startswith("*."):
        label, _, rest = host.partition(".")
        return bool(label) and rest == pattern[2:]
    return pattern == host


def hostnames_intersect(a: str, b: str) -> bool:
    return hostname_matches(a, b) or hostname_matches(b, a)


def host_specificity(hostnames: Sequence[str], host: str) -> tuple[int, int] | None:
    """How specifically a route's hostnames match `host`; None when they do not.

    Exact names beat wildcards, longer beats shorter, and a route without hostnames
    (matches everything) ranks last, as the HTTPRoute hostnames precedence says.
    """
    if not hostnames:
        return (-1, 0)
    best: tuple[int, int] | None = None
    for name in hostnames:
        if hostname_matches(name, host):
            spec = (0 if name.startswith("*.") else 1, len(name))
            best = spec if best is None or spec > best else best
    return best


def parse_duration(value: str | None) -> float | None:
    """Gateway API duration ("60s", "1m30s", "500ms") in seconds; None or 0 = no timeout."""
    if not value:
        return None
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    total = sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|h|m|s)", value))
    return total or None


def weighted_choice(weights: Sequence[int], rng: random.Random) -> int | None:
    """Index drawn in proportion to weight; weight 0 is never drawn; None if all are 0."""
    total = sum(w for w in weights if w > 0)
    if total <= 0:
        return None
    draw = rng.randrange(total)
    for index, weight in enumerate(weights):
        if weight > 0:
            if draw < weight:
                return index
            draw -= weight
    return None  # unreachable


def path_prefix_matches(prefix: str, path: str) -> bool:
    """PathPrefix (and Ingress Prefix) matches whole segments: /foo matches /foo and
    /foo/bar, not /foobar; a trailing slash on the prefix is ignored."""
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


@dataclass
class CompiledMatch:
    """One HTTPRouteMatch of one rule, with everything needed to test and rank it."""
    route: Obj
    rule: Obj
    hostnames: list[str]           # route hostnames ([] = any)
    listener_hosts: list[str | None]  # hostnames of the accepted parent listeners
    path_type: str
    path_value: str
    regex: re.Pattern[str] | None
    method: str | None
    headers: list[tuple[str, str, re.Pattern[str] | None]]  # (name, value, regex)
    queries: list[tuple[str, str, re.Pattern[str] | None]]
    rank: tuple[Any, ...]

    def host_spec(self, host: str) -> tuple[int, int, int] | None:
        """(exact, length, tier): the last element makes an HTTPRoute (1) outrank an
        Ingress (0) whose hostname matches as specifically."""
        if not any(h is None or hostname_matches(h, host) for h in self.listener_hosts):
            return None
        spec = host_specificity(self.hostnames, host)
        return None if spec is None else (*spec, 1)

    def matches(self, method: str, path: str, headers: Mapping[str, str],
                query: Mapping[str, str]) -> bool:
        if self.path_type == "Exact":
            if path != self.path_value:
                return False
        elif self.path_type == "RegularExpression":
            # Full match, as Envoy's safe_regex does.
            if self.regex is None or not self.regex.fullmatch(path):
                return False
        elif not path_prefix_matches(self.path_value, path):
            return False
        if self.method and method.upper() != self.method:
            return False
        for pairs, source in ((self.headers, headers), (self.queries, query)):
            for name, value, regex in pairs:
                got = source.get(name)
                if got is None or (regex.fullmatch(got) is None if regex else got != value):
                    return False
        return True


def _value_matchers(items: Iterable[Obj]) -> list[tuple[str, str, re.Pattern[str] | None]]:
    out = []
    for item in items:
        regex = re.compile(item["value"]) if item.get("type") == "RegularExpression" else None
        out.append((item["name"], item["value"], regex))
    return out


def compile_matches(route: Obj, listener_hosts: list[str | None]) -> list[CompiledMatch]:
    """Every match of every rule, each with its static Gateway API precedence rank."""
    meta, spec = route["metadata"], route.get("spec", {})
    out = []
    for rule_index, rule in enumerate(spec.get("rules") or [{}]):
        for match_index, match in enumerate(rule.get("matches") or [{}]):
            path = match.get("path") or {}
            path_type = path.get("type", "PathPrefix")
            path_value = path.get("value", "/")
            try:
                regex = re.compile(path_value) if path_type == "RegularExpression" else None
                headers = _value_matchers(match.get("headers") or [])
                queries = _value_matchers(match.get("queryParams") or [])
            except re.error as exc:
                log.warning("route %s/%s: bad regex skipped: %s",
                            meta.get("namespace"), meta["name"], exc)
                continue
            path_class = {"Exact": 3, "PathPrefix": 2, "RegularExpression": 1}.get(path_type, 0)
            # Sorted ascending = best first: exact > longest prefix > regex, then method,
            # header and query match counts, then oldest route, then namespace/name, then
            # rule order.
            rank = (-path_class, -len(path_value), -bool(match.get("method")), -len(headers),
                    -len(queries), meta.get("creationTimestamp", ""),
                    f"{meta.get('namespace', '')}/{meta['name']}", rule_index, match_index)
            out.append(CompiledMatch(
                route=route, rule=rule, hostnames=list(spec.get("hostnames") or []),
                listener_hosts=listener_hosts, path_type=path_type, path_value=path_value,
                regex=regex, method=match.get("method"), headers=headers, queries=queries,
                rank=rank))
    return out


@dataclass
class IngressMatch(CompiledMatch):
    """One path of one Ingress rule (or its defaultBackend), as a single-backend match.

    `path_type` keeps the Ingress's own name (Exact, Prefix, ImplementationSpecific,
    defaultBackend); all but Exact match as a prefix.
    """

    def host_spec(self, host: str) -> tuple[int, int, int] | None:
        if not self.hostnames:
            return (-1, 0, 0)
        name = self.hostnames[0]
        if not ingress_host_matches(name, host):
            return None
        return (0 if name.startswith("*.") else 1, len(name), 0)


def compile_ingress(ing: Obj) -> list[IngressMatch]:
    """Every path of every rule of an Ingress, then its defaultBackend (matching any host
    and path, ranked last); Exact before longer Prefix before shorter Prefix."""
    meta, spec = ing["metadata"], ing.get("spec") or {}
    ns = meta.get("namespace", "")
    out: list[IngressMatch] = []

    def add(host: str, path_type: str, path: str, backend: Obj | None, *order: int) -> None:
        svc = (backend or {}).get("service")
        if not svc or not svc.get("name"):
            return  # `resource` backends are not supported
        port = svc.get("port") or {}
        ref = {"group": "", "kind": "Service", "name": svc["name"], "namespace": ns,
               "port": port.get("number") or port.get("name")}
        rank = (path_type == "defaultBackend", path_type != "Exact", -len(path),
                meta.get("creationTimestamp", ""), f"{ns}/{meta['name']}", *order)
        out.append(IngressMatch(
            route=ing, rule={"backendRefs": [ref]}, hostnames=[host] if host else [],
            listener_hosts=[None], path_type=path_type, path_value=path, regex=None,
            method=None, headers=[], queries=[], rank=rank))

    for rule_index, rule in enumerate(spec.get("rules") or []):
        for path_index, item in enumerate((rule.get("http") or {}).get("paths") or []):
            add(rule.get("host") or "", item.get("pathType") or "ImplementationSpecific",
                item.get("path") or "/", item.get("backend"), rule_index, path_index)
    if spec.get("defaultBackend"):
        add("", "defaultBackend", "/", spec["defaultBackend"], 0, 0)
    return out


@dataclass
class RouteTable:
    entries: list[CompiledMatch] = field(default_factory=list)

    @classmethod
    def build(cls, view: View) -> RouteTable:
        entries = []
        for route in view.httproutes.values():
            hosts: list[str | None] = []
            for parent in attach_route(route, view):
                if parent.accepted:
                    hosts.extend(parent.listener_hosts)
            if hosts:
                entries.extend(compile_matches(route, hosts))
        entries.sort(key=lambda e: e.rank)
        ingress_entries = [m for ing in view.ingresses.values() if view.is_our_ingress(ing)
                           for m in compile_ingress(ing)]
        ingress_entries.sort(key=lambda e: e.rank)
        return cls([*entries, *ingress_entries])

    def select(self, host: str, method: str, path: str, headers: Mapping[str, str],
               query: Mapping[str, str]) -> CompiledMatch | None:
        """Most specific hostname first (an HTTPRoute before an Ingress on a tie); among
        equals, the first match in precedence order."""
        best: CompiledMatch | None = None
        best_spec: tuple[int, int, int] | None = None
        for entry in self.entries:
            spec = entry.host_spec(host)
            if spec is None or (best_spec is not None and spec <= best_spec):
                continue
            if entry.matches(method, path, headers, query):
                best, best_spec = entry, spec
        return best

    def summary(self) -> str:
        routes: dict[str, str] = {}
        for e in self.entries:
            meta = e.route["metadata"]
            name = f"{meta['namespace']}/{meta['name']}"
            if isinstance(e, IngressMatch):  # one group per rule host
                name = f"ingress {name}{e.hostnames}"
            backends = ",".join(f"{b.get('name')}:{b.get('port')}*{b.get('weight', 1)}"
                                for b in e.rule.get("backendRefs") or [])
            routes.setdefault(name, f"{name} ->" if isinstance(e, IngressMatch)
                              else f"{name}{e.hostnames} ->")
            routes[name] += f" {e.path_type}:{e.path_value}=[{backends}]"
        return "; ".join(routes[k] for k in sorted(routes)) or "(empty)"


# ------------------------------------------------------ attachment and status

@dataclass
class View:
    """The watched objects, keyed by (namespace, name)."""
    gatewayclasses: dict[Key, Obj] = field(default_factory=dict)
    gateways: dict[Key, Obj] = field(default_factory=dict)
    httproutes: dict[Key, Obj] = field(default_factory=dict)
    ingressclasses: dict[Key, Obj] = field(default_factory=dict)
    ingresses: dict[Key, Obj] = field(default_factory=dict)
    services: dict[Key, Obj] = field(default_factory=dict)
    endpointslices: dict[Key, Obj] = field(default_factory=dict)
    pods: dict[Key, Obj] = field(default_factory=dict)

    def kind(self, name: str) -> dict[Key, Obj]:
        result: dict[Key, Obj] = getattr(self, name)
        return result

    def is_our_class(self, name: str) -> bool:
        gc = self.gatewayclasses.get(("", name))
        return gc is not None and gc.get("spec", {}).get("controllerName") == CONTROLLER_NAME

    def is_our_gateway(self, gw: Obj | None) -> bool:
        return gw is not None and self.is_our_class(gw.get("spec", {}).get("gatewayClassName", ""))

    def is_our_ingress_class(self, ic: Obj | None) -> bool:
        return ic is not None and (ic.get("spec") or {}).get("controller") == CONTROLLER_NAME

    def is_our_ingress(self, ing: Obj) -> bool:
        """By spec.ingressClassName, else the legacy annotation, else (no class at all)
        when one of our IngressClasses is the cluster default."""
        annotations = ing.get("metadata", {}).get("annotations") or {}
        name = (ing.get("spec") or {}).get("ingressClassName") \
            or annotations.get(INGRESS_CLASS_ANNOTATION)
        if name:
            return self.is_our_ingress_class(self.ingressclasses.get(("", name)))
        return any(self.is_our_ingress_class(ic) and (ic["metadata"].get("annotations") or {})
                   .get(DEFAULT_CLASS_ANNOTATION) == "true"
                   for ic in self.ingressclasses.values())


@dataclass
class ParentResult:
    ref: Obj  # the parentRef as written, with group/kind defaulted
    gateway: Key
    accepted: bool
    reason: str
    message: str
    listeners: list[str] = field(default_factory=list)
    listener_hosts: list[str | None] = field(default_factory=list)


def condition(ctype: str, ok: bool, reason: str, message: str = "",
              generation: int | None = None, now: str = "") -> Obj:
    cond: Obj = {"type": ctype, "status": "True" if ok else "False", "reason": reason,
                 "message": message, "lastTransitionTime": now or now_rfc3339()}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def merge_conditions(existing: Sequence[Obj] | None, desired: Sequence[Obj]) -> list[Obj]:
    """Desired conditions replace same-typed ones, keeping lastTransitionTime while the
    status does not flip (so an unchanged status compares equal: no write loops)."""
    old = {c.get("type"): c for c in existing or []}
    out = [c for c in existing or [] if c.get("type") not in {d["type"] for d in desired}]
    for cond in desired:
        prev = old.get(cond["type"])
        if prev and prev.get("status") == cond["status"] and prev.get("lastTransitionTime"):
            cond = {**cond, "lastTransitionTime": prev["lastTransitionTime"]}
        out.append(cond)
    return out


def _listener_allows(listener: Obj, gateway_ns: str, route_ns: str) -> bool:
    if listener.get("protocol") != "HTTP":
        return False
    allowed = listener.get("allowedRoutes") or {}
    kinds = allowed.get("kinds")
    if kinds and not any(k.get("kind") == "HTTPRoute" and k.get("group", GATEWAY_GROUP)
                         == GATEWAY_GROUP for k in kinds):
        return False
    frm = (allowed.get("namespaces") or {}).get("from", "Same")
    return frm != "Same" or gateway_ns == route_ns  # "Selector" treated as "All"


def attach_route(route: Obj, view: View) -> list[ParentResult]:
    """Our parentRefs of `route` and whether each one's Gateway accepts it."""
    ns = route["metadata"]["namespace"]
    hostnames = route.get("spec", {}).get("hostnames") or []
    bad_filters = sorted({f.get("type", "?") for rule in route.get("spec", {}).get("rules") or []
                          for f in [*(rule.get("filters") or []),
                                    *(f for b in rule.get("backendRefs") or []
                                      for f in b.get("filters") or [])]}
                         - SUPPORTED_FILTERS)
    results = []
    for raw in route.get("spec", {}).get("parentRefs") or []:
        ref = {**raw, "group": raw.get("group", GATEWAY_GROUP), "kind": raw.get("kind", "Gateway")}
        if ref["group"] != GATEWAY_GROUP or ref["kind"] != "Gateway":
            continue
        gw_key = (ref.get("namespace") or ns, ref["name"])
        gw = view.gateways.get(gw_key)
        if gw is None or not view.is_our_gateway(gw):
            continue
        listeners = gw.get("spec", {}).get("listeners") or []
        candidates = [lst for lst in listeners
                      if ref.get("sectionName") in (None, lst.get("name"))
                      and ref.get("port") in (None, lst.get("port"))]
        result = ParentResult(ref, gw_key, False, "NoMatchingParent",
                              "no listener matches the parentRef's sectionName/port")
        if candidates:
            allowed = [lst for lst in candidates if _listener_allows(lst, gw_key[0], ns)]
            hosted = [lst for lst in allowed if not lst.get("hostname") or not hostnames
                      or any(hostnames_intersect(lst["hostname"], h) for h in hostnames)]
            if not allowed:
                result.reason = "NotAllowedByListeners"
                result.message = "no listener allows HTTPRoutes from this namespace"
            elif not hosted:
                result.reason = "NoMatchingListenerHostname"
                result.message = "no listener hostname intersects the route's hostnames"
            elif bad_filters:
                result.reason = "UnsupportedValue"
                result.message = f"unsupported filter types: {', '.join(bad_filters)}"
            else:
                result.accepted, result.reason, result.message = True, "Accepted", ""
                result.listeners = [lst["name"] for lst in hosted]
                result.listener_hosts = [lst.get("hostname") for lst in hosted]
        results.append(result)
    return results


def service_port(svc: Obj, port: int | str | None) -> int | None:
    """The Service port numbered `port`, or named `port` (an Ingress's service.port.name)."""
    field_name = "name" if isinstance(port, str) else "port"
    return next((p.get("port") for p in svc.get("spec", {}).get("ports") or []
                 if p.get(field_name) == port), None)


def check_backend(ref: Obj, route_ns: str, view: View) -> tuple[str, str] | None:
    """(reason, message) when a backendRef cannot be resolved; None when it can."""
    if ref.get("group", "") not in ("", "core") or ref.get("kind", "Service") != "Service":
        return "InvalidKind", f"backendRef kind {ref.get('group')}/{ref.get('kind')} unsupported"
    ns = ref.get("namespace") or route_ns
    svc = view.services.get((ns, ref["name"]))
    if svc is None:
        return "BackendNotFound", f"Service {ns}/{ref['name']} not found"
    if service_port(svc, ref.get("port")) is None:
        return "BackendNotFound", f"Service {ns}/{ref['name']} has no port {ref.get('port')}"
    return None


def route_parent_statuses(route: Obj, view: View, now: str = "") -> list[Obj]:
    """Our status.parents entries for `route` (one per parentRef pointing at our Gateway)."""
    meta = route["metadata"]
    gen = meta.get("generation")
    problem = None
    for rule in route.get("spec", {}).get("rules") or []:
        for ref in rule.get("backendRefs") or []:
            problem = problem or check_backend(ref, meta["namespace"], view)
    resolved = condition("ResolvedRefs", problem is None,
                         problem[0] if problem else "ResolvedRefs",
                         problem[1] if problem else "", gen, now)
    return [{"parentRef": p.ref, "controllerName": CONTROLLER_NAME,
             "conditions": [condition("Accepted", p.accepted, p.reason, p.message, gen, now),
                            resolved]}
            for p in attach_route(route, view)]


def merge_route_parents(existing: Sequence[Obj] | None, ours: Sequence[Obj]) -> list[Obj]:
    """Other controllers' entries untouched and in place, then ours (old conditions'
    transition times kept)."""
    def ref_id(ref: Obj) -> str:
        return json.dumps({**ref, "group": ref.get("group", GATEWAY_GROUP),
                           "kind": ref.get("kind", "Gateway")}, sort_keys=True)

    mine = {ref_id(p.get("parentRef", {})): p for p in existing or []
            if p.get("controllerName") == CONTROLLER_NAME}
    out = [p for p in existing or [] if p.get("controllerName") != CONTROLLER_NAME]
    for entry in ours:
        prev = mine.get(ref_id(entry["parentRef"]), {})
        out.append({**entry, "conditions": merge_conditions(prev.get("conditions"),
                                                            entry["conditions"])})
    return out


def route_status(route: Obj, view: View, now: str = "") -> Obj:
    status = dict(route.get("status") or {})
    parents = merge_route_parents(status.get("parents"), route_parent_statuses(route, view, now))
    if parents != (status.get("parents") or []):
        status["parents"] = parents
    return status


def gatewayclass_status(gc: Obj, now: str = "") -> Obj:
    status = dict(gc.get("status") or {})
    gen = gc["metadata"].get("generation")
    status["conditions"] = merge_conditions(
        status.get("conditions"), [condition("Accepted", True, "Accepted", "", gen, now)])
    return status


def gateway_status(gw: Obj, view: View, address: str, now: str = "") -> Obj:
    gen = gw["metadata"].get("generation")
    status = dict(gw.get("status") or {})
    status["addresses"] = [{"type": "IPAddress", "value": address}]
    status["conditions"] = merge_conditions(status.get("conditions"), [
        condition("Accepted", True, "Accepted", "", gen, now),
        condition("Programmed", True, "Programmed", "", gen, now)])
    attached: dict[str, int] = {}
    for route in view.httproutes.values():
        for parent in attach_route(route, view):
            if parent.accepted and parent.gateway == key_of(gw):
                for name in parent.listeners:
                    attached[name] = attached.get(name, 0) + 1
    old = {lst.get("name"): lst for lst in status.get("listeners") or []}
    listeners = []
    for lst in gw.get("spec", {}).get("listeners") or []:
        ok = lst.get("protocol") == "HTTP"  # no TLS here
        why = "" if ok else f"protocol {lst.get('protocol')} is not supported"
        conds = [condition("Accepted", ok, "Accepted" if ok else "UnsupportedProtocol", why,
                           gen, now),
                 condition("Programmed", ok, "Programmed" if ok else "Invalid", why, gen, now),
                 condition("ResolvedRefs", True, "ResolvedRefs", "", gen, now)]
        listeners.append({
            "name": lst["name"], "attachedRoutes": attached.get(lst["name"], 0),
            "supportedKinds": [{"group": GATEWAY_GROUP, "kind": "HTTPRoute"}] if ok else [],
            "conditions": merge_conditions(old.get(lst["name"], {}).get("conditions"), conds)})
    if listeners:
        status["listeners"] = listeners
    return status


def ingress_status(ing: Obj, address: str) -> Obj:
    """What an ingress controller reports: the address it serves the Ingress on."""
    return {**(ing.get("status") or {}), "loadBalancer": {"ingress": [{"ip": address}]}}


# ------------------------------------------------------------- backends

@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int


def endpoints_for(svc: Obj, service_port: int, slices: Iterable[Obj],
                  pods: Mapping[Key, Obj]) -> list[Endpoint]:
    """Ready endpoints of a Service port; pods run locally map to their loopback port.

    A pod carrying LOOPBACK_PORTS_ANNOTATION without this port, or a targetRef pod the
    view has not seen yet, is skipped: its address is a fake pod IP.
    """
    spec_port = next((p for p in svc.get("spec", {}).get("ports") or []
                      if p.get("port") == service_port), None)
    if spec_port is None:
        return []
    port_name = spec_port.get("name") or ""
    out: list[Endpoint] = []
    for es in slices:
        if es.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue
        ports = es.get("ports") or []
        port = next((p for p in ports if (p.get("name") or "") == port_name), None)
        if port is None and len(ports) == 1:
            port = ports[0]
        if port is None or port.get("port") is None:
            continue
        for ep in es.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False or not ep.get("addresses"):
                continue
            target = ep.get("targetRef") or {}
            address = ep["addresses"][0]
            if target.get("kind") == "Pod":
                pod = pods.get((target.get("namespace") or es["metadata"]["namespace"],
                                target.get("name", "")))
                if pod is None:
                    continue
                raw = (pod.get("metadata", {}).get("annotations") or {}).get(
                    LOOPBACK_PORTS_ANNOTATION)
                if raw is not None:
                    try:
                        local = json.loads(raw).get(str(port["port"]))
                    except (ValueError, AttributeError):
                        local = None
                    if local is None:
                        continue
                    endpoint = Endpoint("127.0.0.1", int(local))
                    if endpoint not in out:
                        out.append(endpoint)
                    continue
            host = f"[{address}]" if ":" in address else address
            endpoint = Endpoint(host, int(port["port"]))
            if endpoint not in out:
                out.append(endpoint)
    return out


def apply_header_filter(spec: Obj | None, headers: CIMultiDict[str]) -> None:
    for item in (spec or {}).get("set") or []:
        headers[item["name"]] = item["value"]
    for item in (spec or {}).get("add") or []:
        headers.add(item["name"], item["value"])
    for name in (spec or {}).get("remove") or []:
        headers.popall(name, None)


def rewrite_path(rewrite: Obj, path: str, matched_prefix: str | None) -> str:
    kind = rewrite.get("type")
    if kind == "ReplaceFullPath":
        return str(rewrite.get("replaceFullPath") or "/")
    if kind == "ReplacePrefixMatch" and matched_prefix is not None:
        rest = path[len(matched_prefix.rstrip("/")):]
        new = str(rewrite.get("replacePrefixMatch") or "").rstrip("/") + rest
        return new if new.startswith("/") else "/" + new
    return path


def apply_request_filters(filters: Iterable[Obj], headers: CIMultiDict[str], path: str,
                          matched_prefix: str | None) -> str:
    """Apply request-side filters in place; returns the (possibly rewritten) path."""
    for f in filters:
        if f.get("type") == "RequestHeaderModifier":
            apply_header_filter(f.get("requestHeaderModifier"), headers)
        elif f.get("type") == "URLRewrite":
            rewrite = f.get("urlRewrite") or {}
            if rewrite.get("hostname"):
                headers["Host"] = rewrite["hostname"]
            if rewrite.get("path"):
                path = rewrite_path(rewrite["path"], path, matched_prefix)
    return path


def apply_response_filters(filters: Iterable[Obj], headers: CIMultiDict[str]) -> None:
    for f in filters:
        if f.get("type") == "ResponseHeaderModifier":
            apply_header_filter(f.get("responseHeaderModifier"), headers)


# ------------------------------------------------------------ API server

class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class KubeApi:
    """Minimal async client for the API server, authenticated from a kubeconfig."""

    def __init__(self, kubeconfig: str | None) -> None:
        cfg = k8s_client.Configuration()  # the official client only parses the kubeconfig
        k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        self.base = URL(cfg.host)
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if not cfg.verify_ssl:
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        self.ssl = ctx
        self.headers = {"Accept": "application/json"}
        token = (cfg.api_key or {}).get("authorization")
        if token:
            self.headers["Authorization"] = token
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeApi:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl), headers=self.headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session:
            await self.session.close()

    async def request(self, method: str, path: str, body: Obj | None = None,
                      params: Mapping[str, str] | None = None) -> Obj:
        assert self.session is not None
        async with self.session.request(
                method, self.base.with_path(path), json=body, params=params,
                timeout=aiohttp.ClientTimeout(total=30)) as resp:
            raw = await resp.read()
            try:
                payload = json.loads(raw or b"null")
            except ValueError:
                payload = raw.decode(errors="replace")
            if resp.status >= 300:
                message = payload.get("message") if isinstance(payload, dict) else payload
                raise ApiError(resp.status, f"{method} {path}: {message}")
            return payload if isinstance(payload, dict) else {}

    async def watch(self, path: str, params: Mapping[str, str]) -> AsyncGenerator[Obj, None]:
        """Watch events until the server ends the stream."""
        assert self.session is not None
        query = {**params, "watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": "300"}
        async with self.session.get(self.base.with_path(path), params=query,
                                    timeout=aiohttp.ClientTimeout(sock_read=330)) as resp:
            if resp.status >= 300:
                raise ApiError(resp.status, f"watch {path}: {await resp.text()}")
            buf = b""
            # Split lines by hand: a single event (a big Pod) can outgrow readline's limit.
            async for chunk in resp.content.iter_any():
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


def slim(kind: str, obj: Obj) -> Obj:
    """Keep only what routing needs of pods (their count dwarfs everything else)."""
    meta = obj.get("metadata", {})
    meta.pop("managedFields", None)
    if kind == "pods":
        annotations = meta.get("annotations") or {}
        return {"metadata": {
            "namespace": meta.get("namespace"), "name": meta.get("name"),
            "annotations": {k: v for k, v in annotations.items()
                            if k == LOOPBACK_PORTS_ANNOTATION}}}
    return obj


# --------------------------------------------------------------- process

class LocalGateway:
    """Watches the cluster, keeps statuses current, and proxies requests."""

    def __init__(self, api: KubeApi, address: str, rng: random.Random | None = None) -> None:
        self.api = api
        self.address = address
        self.view = View()
        self.synced: set[str] = set()
        self.all_synced = asyncio.Event()
        self.status_dirty = asyncio.Event()
        self.rng = rng or random.Random()
        self._table: RouteTable | None = None
        self._table_summary = ""
        self._endpoints: dict[tuple[str, str, int], list[Endpoint]] = {}
        self._rr: dict[tuple[str, str, int], int] = {}
        self.http: aiohttp.ClientSession | None = None

    # -- view maintenance

    def changed(self, kind: str) -> None:
        if kind in ROUTING_KINDS:
            self._table = None
        if kind in BACKEND_KINDS:
            self._endpoints.clear()
        if kind in STATUS_KINDS:
            self.status_dirty.set()

    def table(self) -> RouteTable:
        if self._table is None:
            self._table = RouteTable.build(self.view)
            summary = self._table.summary()
            if summary != self._table_summary:
                self._table_summary = summary
                log.info("route table: %s", summary)
        return self._table

    async def watch_kind(self, kind: str) -> None:
        """LIST then WATCH one kind forever; relist on 410/ERROR, back off on failures."""
        path, params = resource_path(kind), RESOURCES[kind][2]
        store = self.view.kind(kind)
        backoff = 0.2
        while True:
            try:
                listing = await self.api.request("GET", path, params=params)
                store.clear()
                for item in listing.get("items") or []:
                    store[key_of(item)] = slim(kind, item)
                self.changed(kind)
                self.synced.add(kind)
                if self.synced >= RESOURCES.keys():
                    self.all_synced.set()
                backoff = 0.2
                await self._watch_from(kind, listing.get("metadata", {})["resourceVersion"])
            except asyncio.CancelledError:
                raise
            except (aiohttp.ClientError, TimeoutError, ApiError, ValueError, KeyError,
                    OSError) as exc:
                log.warning("watch %s failed (%s); retrying in %.1fs", kind, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _watch_from(self, kind: str, rv: str) -> None:
        """Apply watch events; resume after a server-side timeout, return on ERROR (410)."""
        path, params = resource_path(kind), RESOURCES[kind][2]
        store = self.view.kind(kind)
        while True:
            watch = self.api.watch(path, {**params, "resourceVersion": rv})
            async with contextlib.aclosing(watch) as events:
                async for event in events:
                    etype, obj = event.get("type"), event.get("object") or {}
                    if etype == "ERROR":
                        log.info("watch %s: %s; relisting", kind, obj.get("message"))
                        return
                    rv = obj.get("metadata", {}).get("resourceVersion", rv)
                    if etype == "DELETED":
                        store.pop(key_of(obj), None)
                    elif etype != "BOOKMARK":
                        store[key_of(obj)] = slim(kind, obj)
                    if etype != "BOOKMARK":
                        self.changed(kind)

    # -- status

    async def status_loop(self) -> None:
        await self.all_synced.wait()
        while True:
            await self.status_dirty.wait()
            self.status_dirty.clear()
            await asyncio.sleep(0.05)  # coalesce bursts of events into one pass
            self.table()  # rebuilt now, so each route table change is logged once
            try:
                await self.write_statuses()
            except Exception as exc:  # keep serving traffic whatever a status write hits
                log.warning("status update failed (%r); retrying", exc)
                await asyncio.sleep(1.0)
                self.status_dirty.set()

    async def write_statuses(self) -> None:
        for gc in list(self.view.gatewayclasses.values()):
            if gc.get("spec", {}).get("controllerName") == CONTROLLER_NAME:
                await self._put_status("gatewayclasses", gc, gatewayclass_status)
        for gw in list(self.view.gateways.values()):
            if self.view.is_our_gateway(gw):
                await self._put_status("gateways", gw,
                                       lambda o: gateway_status(o, self.view, self.address))
        for route in list(self.view.httproutes.values()):
            await self._put_status("httproutes", route, lambda o: route_status(o, self.view))
        for ing in list(self.view.ingresses.values()):
            if self.view.is_our_ingress(ing):
                await self._put_status("ingresses", ing,
                                       lambda o: ingress_status(o, self.address))

    async def _put_status(self, kind: str, obj: Obj, compute: Callable[[Obj], Obj]) -> None:
        """Read-modify-write of the status subresource, retried on conflict."""
        ns, name = key_of(obj)
        url = resource_path(kind, ns, name)
        for _ in range(5):
            status = compute(obj)
            if status == (obj.get("status") or {}):
                return
            body = {**obj, "apiVersion": RESOURCES[kind][0], "kind": RESOURCES[kind][1],
                    "status": status}
            try:
                await self.api.request("PUT", url + "/status", body)
                log.info("status written: %s %s", kind, f"{ns}/{name}" if ns else name)
                return
            except ApiError as exc:
                if exc.status == 404:
                    return
                if exc.status != 409:
                    raise
                obj = await self.api.request("GET", url)

    # -- proxy

    def resolve(self, ref: Obj, route_ns: str
                ) -> tuple[tuple[str, str, int], list[Endpoint]] | None:
        """(namespace, Service, port number) and the endpoints of a backendRef (cached until
        backends change); None if invalid."""
        if check_backend(ref, route_ns, self.view) is not None:
            return None
        ns, name = ref.get("namespace") or route_ns, ref["name"]
        port = service_port(self.view.services[(ns, name)], ref["port"])
        if port is None:
            return None
        cache_key = (ns, name, port)
        cached = self._endpoints.get(cache_key)
        if cached is None:
            slices = [s for s in self.view.endpointslices.values()
                      if s["metadata"].get("namespace") == ns
                      and (s["metadata"].get("labels") or {}).get(SERVICE_NAME_LABEL) == name]
            cached = endpoints_for(self.view.services[(ns, name)], port, slices, self.view.pods)
            self._endpoints[cache_key] = cached
        return cache_key, cached

    def next_endpoint(self, cache_key: tuple[str, str, int],
                      endpoints: list[Endpoint]) -> Endpoint:
        n = self._rr.get(cache_key, 0)
        self._rr[cache_key] = n + 1
        return endpoints[n % len(endpoints)]

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        host = strip_port(request.host)
        raw_path, _, raw_query = request.raw_path.partition("?")
        match = self.table().select(host, request.method, raw_path, request.headers,
                                    request.rel_url.query)
        if match is None:
            return text(404, f"no HTTPRoute or Ingress matches host {host!r} "
                             f"path {raw_path!r}\n")
        refs = match.rule.get("backendRefs") or []
        index = weighted_choice([int(r.get("weight", 1)) for r in refs], self.rng)
        if index is None:
            return text(500, "route rule has no backend with a non-zero weight\n")
        ref, route_ns = refs[index], match.route["metadata"]["namespace"]
        resolved = self.resolve(ref, route_ns)
        svc = f"{ref.get('namespace') or route_ns}/{ref['name']}"
        if resolved is None:
            return text(500, f"backend {svc}:{ref.get('port')} cannot be resolved\n")
        cache_key, endpoints = resolved
        if not endpoints:
            return text(503, f"no ready endpoints for Service {svc} port {ref['port']}\n")

        headers: CIMultiDict[str] = CIMultiDict()
        drop = HOP_BY_HOP | {h.strip().lower()
                             for h in request.headers.get("Connection", "").split(",")}
        for name, value in request.headers.items():
            if name.lower() not in drop and name.lower() != "expect":
                headers.add(name, value)
        forwarded = headers.get("X-Forwarded-For")
        remote = request.remote or ""
        headers["X-Forwarded-For"] = f"{forwarded}, {remote}" if forwarded else remote
        headers.setdefault("X-Forwarded-Proto", "http")
        filters = [*(match.rule.get("filters") or []), *(ref.get("filters") or [])]
        prefix = match.path_value if match.path_type == "PathPrefix" else None
        path = apply_request_filters(filters, headers, raw_path, prefix)
        target = path + ("?" + raw_query if raw_query else "")

        timeouts = match.rule.get("timeouts") or {}
        limits = [t for t in (parse_duration(timeouts.get("request")),
                              parse_duration(timeouts.get("backendRequest"))) if t]
        timeout = aiohttp.ClientTimeout(total=min(limits) if limits else None, sock_connect=5)
        body: Any = None
        if request.body_exists:
            length = request.content_length
            small = length is not None and length <= BUFFER_LIMIT
            body = await request.read() if small else request.content.iter_chunked(1 << 16)
        attempts = 2 if body is None or isinstance(body, bytes) else 1
        assert self.http is not None
        for attempt in range(attempts):
            ep = self.next_endpoint(cache_key, endpoints)
            url = URL(f"http://{ep.host}:{ep.port}{target}", encoded=True)
            try:
                async with self.http.request(request.method, url, headers=headers, data=body,
                                             allow_redirects=False, timeout=timeout) as up:
                    return await self._relay(request, up, filters, svc)
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError) and \
                        not isinstance(exc, aiohttp.ConnectionTimeoutError):
                    return text(504, f"upstream {svc} ({ep.host}:{ep.port}) timed out\n")
                # One retry covers a keep-alive connection the server closed, or a pod
                # that just went away.
                if attempt + 1 == attempts:
                    return text(502, f"upstream {svc} ({ep.host}:{ep.port}) failed: {exc}\n")
        raise AssertionError("unreachable")

    async def _relay(self, request: web.BaseRequest, up: aiohttp.ClientResponse,
                     filters: list[Obj], svc: str) -> web.StreamResponse:
        drop = HOP_BY_HOP | {h.strip().lower() for h in up.headers.get("Connection", "").split(",")}
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in up.headers.items() if k.lower() not in drop)
        apply_response_filters(filters, headers)
        headers[BACKEND_HEADER] = svc
        if request.method != "HEAD" and up.content_length is not None \
                and up.content_length <= BUFFER_LIMIT:
            payload = await up.read()  # small bodies in one write: cheaper than streaming
            headers.popall("Content-Length", None)
            return web.Response(status=up.status, reason=up.reason, body=payload,
                                headers=headers)
        stream = web.StreamResponse(status=up.status, reason=up.reason, headers=headers)
        await stream.prepare(request)
        try:
            async for chunk in up.content.iter_any():
                await stream.write(chunk)
        except aiohttp.ClientError as exc:
            # Headers are sent: no retry or error status is possible, so cut the client
            # connection rather than end a truncated body cleanly.
            raise ConnectionResetError(f"upstream {svc} broke mid-response: {exc}") from exc
        await stream.write_eof()
        return stream


def text(status: int, body: str) -> web.Response:
    return web.Response(status=status, text=body)


async def serve(args: argparse.Namespace) -> int:
    async with KubeApi(args.kubeconfig) as api:
        gw = LocalGateway(api, args.host)
        gw.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=30),
            auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept", "Content-Type"))
        tasks = [asyncio.create_task(gw.watch_kind(kind)) for kind in RESOURCES]
        tasks.append(asyncio.create_task(gw.status_loop()))
        runners = []
        proxy = web.ServerRunner(web.Server(gw.handle, auto_decompress=False))
        await proxy.setup()
        await web.TCPSite(proxy, args.host, args.port).start()
        runners.append(proxy)
        if args.health_port:
            async def health(request: web.BaseRequest) -> web.StreamResponse:
                if request.path == "/routes":
                    return text(200, gw.table().summary() + "\n")
                if request.path != "/healthz":
                    return text(404, "only /healthz and /routes here\n")
                if not gw.all_synced.is_set():
                    missing = sorted(RESOURCES.keys() - gw.synced)
                    return text(503, f"waiting for initial list of {', '.join(missing)}\n")
                return text(200, "ok\n")
            health_runner = web.ServerRunner(web.Server(health))
            await health_runner.setup()
            await web.TCPSite(health_runner, args.host, args.health_port).start()
            runners.append(health_runner)
        log.info("local gateway (%s) listening on %s:%s, health port %s", CONTROLLER_NAME,
                 args.host, args.port, args.health_port or "-")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in done if t is not waiter]
        for task in failed:  # a crashed loop ends the process rather than leave it half-alive
            log.error("task ended: %r", None if task.cancelled() else task.exception())
        for task in [waiter, *tasks]:
            task.cancel()
        await asyncio.gather(waiter, *tasks, return_exceptions=True)
        for runner in runners:
            await runner.cleanup()
        await gw.http.close()
        return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m slipway.devcluster.gateway",
        description="Local stand-in for a Gateway API implementation and an ingress "
                    "controller (dev cluster only).")
    parser.add_argument("--kubeconfig", default=None, help="defaults to $KUBECONFIG")
    parser.add_argument("--port", type=int, required=True, help="port requests arrive on")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--health-port", type=int, default=0,
                        help="serves /healthz (200 once every watch has listed) and /routes")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s gateway %(levelname)s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
