"""The local Gateway API and Ingress stand-in: routing, weights, endpoints and status,
without a cluster."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer
from multidict import CIMultiDict

from slipway.devcluster import gateway as g

NS = "team"
GW_NS = "kserve"
Obj = dict[str, Any]


def gateway_class(controller: str = g.CONTROLLER_NAME, name: str = "local") -> Obj:
    return {"metadata": {"name": name, "generation": 1}, "spec": {"controllerName": controller}}


def gateway(cls: str = "local", allow_from: str = "All", hostname: str | None = None) -> Obj:
    listener: Obj = {"name": "http", "port": 80, "protocol": "HTTP",
                     "allowedRoutes": {"namespaces": {"from": allow_from}}}
    if hostname:
        listener["hostname"] = hostname
    return {"metadata": {"name": "kserve-ingress-gateway", "namespace": GW_NS, "generation": 1},
            "spec": {"gatewayClassName": cls, "listeners": [listener]}}


def backend(name: str, weight: int | None = None, port: int = 80) -> Obj:
    ref: Obj = {"group": "", "kind": "Service", "name": name, "namespace": NS, "port": port}
    if weight is not None:
        ref["weight"] = weight
    return ref


def rule(*backends: Obj, path: tuple[str, str] = ("RegularExpression", "^/.*$"),
         headers: list[Obj] | None = None, filters: list[Obj] | None = None) -> Obj:
    match: Obj = {"path": {"type": path[0], "value": path[1]}}
    if headers:
        match["headers"] = headers
    return {"matches": [match], "backendRefs": list(backends), "timeouts": {"request": "60s"},
            "filters": filters if filters is not None else [{
                "type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [
                    {"name": "KServe-Isvc-Name", "value": "m"},
                    {"name": "KServe-Isvc-Namespace", "value": NS}]}}]}


def route(name: str, hostnames: list[str], *rules: Obj, created: str = "2025-01-01T00:00:00Z",
          status: Obj | None = None) -> Obj:
    """Shaped like KServe v0.16's generated HTTPRoutes."""
    obj: Obj = {
        "metadata": {"name": name, "namespace": NS, "generation": 3,
                     "creationTimestamp": created},
        "spec": {"hostnames": hostnames,
                 "parentRefs": [{"group": g.GATEWAY_GROUP, "kind": "Gateway",
                                 "namespace": GW_NS, "name": "kserve-ingress-gateway"}],
                 "rules": list(rules) or [rule(backend("m-predictor"))]}}
    if status is not None:
        obj["status"] = status
    return obj


def service(name: str, port: int = 80, target: int = 8080, port_name: str = "http") -> Obj:
    return {"metadata": {"name": name, "namespace": NS},
            "spec": {"ports": [{"name": port_name, "port": port, "targetPort": target}]}}


def endpoint(pod: str, ready: bool | None = True, ip: str = "10.244.0.7") -> Obj:
    ep: Obj = {"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}
    if ready is not None:
        ep["conditions"] = {"ready": ready}
    return ep


def endpoint_slice(svc: str, *endpoints: Obj, port: int = 8080, port_name: str = "http") -> Obj:
    return {"metadata": {"name": f"{svc}-abcde", "namespace": NS,
                         "labels": {g.SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4", "ports": [{"name": port_name, "port": port}],
            "endpoints": list(endpoints)}


def pod(name: str, loopback: dict[str, int] | None = None) -> Obj:
    annotations = {g.LOOPBACK_PORTS_ANNOTATION: json.dumps(loopback)} if loopback else {}
    return {"metadata": {"name": name, "namespace": NS, "annotations": annotations}}


def ingress_class(name: str = "slipway-local", controller: str = g.CONTROLLER_NAME,
                  default: bool = False) -> Obj:
    annotations = {g.DEFAULT_CLASS_ANNOTATION: "true"} if default else {}
    return {"metadata": {"name": name, "annotations": annotations},
            "spec": {"controller": controller}}


def ing_path(svc: str, path: str = "/", path_type: str = "Prefix",
             port: int | str = 80) -> Obj:
    number_or_name = {"name": port} if isinstance(port, str) else {"number": port}
    return {"path": path, "pathType": path_type,
            "backend": {"service": {"name": svc, "port": number_or_name}}}


def ingress(name: str = "m", hosts: tuple[str, ...] = ("m-team.example.com",
                                                       "m-predictor-team.example.com"),
            paths: list[Obj] | None = None, cls: str | None = "slipway-local",
            annotations: dict[str, str] | None = None) -> Obj:
    """Shaped like KServe v0.16's Standard-mode Ingress: the top-level and predictor hosts,
    each `/` Prefix to the predictor Service port 80."""
    spec: Obj = {"rules": [{"host": h, "http": {"paths": paths or [ing_path("m-predictor")]}}
                           for h in hosts]}
    if cls is not None:
        spec["ingressClassName"] = cls
    return {"metadata": {"name": name, "namespace": NS, "annotations": annotations or {},
                         "creationTimestamp": "2025-01-01T00:00:00Z"}, "spec": spec}


def view(*objs: tuple[str, Obj]) -> g.View:
    v = g.View()
    v.gatewayclasses[("", "local")] = gateway_class()
    v.gateways[(GW_NS, "kserve-ingress-gateway")] = gateway()
    v.ingressclasses[("", "slipway-local")] = ingress_class()
    for kind, obj in objs:
        v.kind(kind)[g.key_of(obj)] = obj
    return v


def select(v: g.View, host: str, path: str = "/", method: str = "GET",
           headers: dict[str, str] | None = None) -> g.CompiledMatch | None:
    return g.RouteTable.build(v).select(host, method, path, CIMultiDict(headers or {}), {})


# ------------------------------------------------------------------ hostnames

def test_hostname_wildcard_matches_deeper_names_only() -> None:
    assert g.hostname_matches("*.example.com", "m-team.example.com")
    assert g.hostname_matches("*.example.com", "a.b.example.com")
    assert not g.hostname_matches("*.example.com", "example.com")
    assert not g.hostname_matches("*.example.com", "badexample.com")
    assert g.hostname_matches("M-Team.Example.com", "m-team.example.com")
    assert g.strip_port("m-team.example.com:8080") == "m-team.example.com"
    assert g.strip_port("[::1]:80") == "[::1]"


def test_exact_hostname_route_beats_wildcard_route() -> None:
    wild = route("wild", ["*.example.com"], rule(backend("wild-svc"), path=("Exact", "/x")))
    exact = route("exact", ["m-team.example.com"], rule(backend("exact-svc")))
    v = view(("httproutes", wild), ("httproutes", exact))
    # The exact-host route wins even though the wildcard route has an Exact path match.
    chosen = select(v, "m-team.example.com", "/x")
    assert chosen is not None and chosen.route["metadata"]["name"] == "exact"
    chosen = select(v, "other.example.com", "/x")
    assert chosen is not None and chosen.route["metadata"]["name"] == "wild"
    assert select(v, "example.org", "/x") is None


def test_listener_hostname_limits_attachment() -> None:
    v = view(("httproutes", route("m", ["m-team.example.com"])))
    v.gateways[(GW_NS, "kserve-ingress-gateway")] = gateway(hostname="*.other.com")
    [parent] = g.attach_route(v.httproutes[(NS, "m")], v)
    assert not parent.accepted and parent.reason == "NoMatchingListenerHostname"


# ----------------------------------------------------------- path precedence

def test_path_precedence_exact_then_longest_prefix_then_regex() -> None:
    r = route("m", ["m.example.com"],
              rule(backend("regex"), path=("RegularExpression", "^/.*$")),
              rule(backend("short"), path=("PathPrefix", "/v1")),
              rule(backend("long"), path=("PathPrefix", "/v1/models")),
              rule(backend("exact"), path=("Exact", "/v1/models/m:predict")))
    v = view(("httproutes", r))

    def svc(path: str) -> str | None:
        chosen = select(v, "m.example.com", path)
        return None if chosen is None else chosen.rule["backendRefs"][0]["name"]

    assert svc("/v1/models/m:predict") == "exact"
    assert svc("/v1/models/other:predict") == "long"
    assert svc("/v1/modelsX") == "short"  # prefixes match whole path segments only
    assert svc("/v1") == "short"
    assert svc("/v2/models/m/infer") == "regex"


def test_more_header_matches_win_on_equal_paths() -> None:
    canary_hdr = [{"type": "Exact", "name": "X-Canary", "value": "1"}]
    r = route("m", ["m.example.com"],
              rule(backend("stable"), path=("PathPrefix", "/")),
              rule(backend("canary"), path=("PathPrefix", "/"), headers=canary_hdr))
    v = view(("httproutes", r))
    chosen = select(v, "m.example.com", "/a", headers={"x-canary": "1"})
    assert chosen is not None and chosen.rule["backendRefs"][0]["name"] == "canary"
    chosen = select(v, "m.example.com", "/a")
    assert chosen is not None and chosen.rule["backendRefs"][0]["name"] == "stable"


def test_regex_is_a_full_match() -> None:
    explain = ("RegularExpression", r"^/v1/models/[\w-]+:explain$")  # KServe's ExplainPrefix
    r = route("m", ["m.example.com"], rule(backend("explainer"), path=explain))
    v = view(("httproutes", r))
    assert select(v, "m.example.com", "/v1/models/m:explain") is not None
    assert select(v, "m.example.com", "/v1/models/m:explainX") is None


# ------------------------------------------------------------------- weights

def test_weight_zero_is_never_chosen() -> None:
    rng = random.Random(1)
    assert {g.weighted_choice([0, 5, 0], rng) for _ in range(1000)} == {1}
    assert g.weighted_choice([0, 0], rng) is None
    assert g.weighted_choice([], rng) is None


def test_ninety_ten_split_over_ten_thousand_draws() -> None:
    rng = random.Random(42)
    draws = [g.weighted_choice([90, 10], rng) for _ in range(10_000)]
    share = draws.count(1) / len(draws) * 100
    assert 8.0 <= share <= 12.0


# ------------------------------------------------------------ status writing

def test_missing_service_gives_resolved_refs_false() -> None:
    v = view(("httproutes", route("m", ["m.example.com"])))
    [entry] = g.route_parent_statuses(v.httproutes[(NS, "m")], v, now="T")
    conds = {c["type"]: c for c in entry["conditions"]}
    assert entry["controllerName"] == g.CONTROLLER_NAME
    assert entry["parentRef"]["name"] == "kserve-ingress-gateway"
    assert conds["Accepted"]["status"] == "True"
    assert conds["ResolvedRefs"]["status"] == "False"
    assert conds["ResolvedRefs"]["reason"] == "BackendNotFound"
    assert "team/m-predictor" in conds["ResolvedRefs"]["message"]
    assert all(c["observedGeneration"] == 3 for c in conds.values())

    v.services[(NS, "m-predictor")] = service("m-predictor")
    [entry] = g.route_parent_statuses(v.httproutes[(NS, "m")], v, now="T")
    assert [c["status"] for c in entry["conditions"]] == ["True", "True"]


def test_routes_of_other_gateways_or_classes_are_left_alone() -> None:
    v = view(("httproutes", route("m", ["m.example.com"])))
    v.gatewayclasses[("", "local")] = gateway_class(controller="istio.io/gateway-controller")
    assert g.route_parent_statuses(v.httproutes[(NS, "m")], v) == []
    assert g.route_status(v.httproutes[(NS, "m")], v) == {}  # nothing to write


def test_namespace_not_allowed_by_listener() -> None:
    v = view(("httproutes", route("m", ["m.example.com"])),
             ("services", service("m-predictor")))
    v.gateways[(GW_NS, "kserve-ingress-gateway")] = gateway(allow_from="Same")
    [entry] = g.route_parent_statuses(v.httproutes[(NS, "m")], v)
    accepted = entry["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "NotAllowedByListeners")
    assert select(v, "m.example.com") is None


def test_status_parent_merge_keeps_foreign_entries_and_is_stable() -> None:
    foreign = {"parentRef": {"name": "istio-gw", "namespace": "istio-system"},
               "controllerName": "istio.io/gateway-controller",
               "conditions": [{"type": "Accepted", "status": "False", "reason": "Whatever",
                               "message": "", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
    stale_ours = {"parentRef": {"name": "gone", "namespace": GW_NS, "group": g.GATEWAY_GROUP,
                                "kind": "Gateway"},
                  "controllerName": g.CONTROLLER_NAME, "conditions": []}
    r = route("m", ["m.example.com"], status={"parents": [foreign, stale_ours]})
    v = view(("httproutes", r), ("services", service("m-predictor")))

    first = g.route_status(r, v, now="2025-05-05T00:00:00Z")
    assert first["parents"][0] == foreign  # untouched, in place
    assert [p["controllerName"] for p in first["parents"]] == [
        "istio.io/gateway-controller", g.CONTROLLER_NAME]  # our stale entry is dropped
    assert first["parents"][1]["parentRef"]["name"] == "kserve-ingress-gateway"

    # Once written, a later pass computes the identical status: no write loop.
    r["status"] = first
    assert g.route_status(r, v, now="2025-06-06T00:00:00Z") == first
    # A flip changes lastTransitionTime only for the condition that flipped.
    del v.services[(NS, "m-predictor")]
    third = g.route_status(r, v, now="2025-07-07T00:00:00Z")
    times = {c["type"]: c["lastTransitionTime"] for c in third["parents"][1]["conditions"]}
    assert times == {"Accepted": "2025-05-05T00:00:00Z", "ResolvedRefs": "2025-07-07T00:00:00Z"}


def test_gateway_and_class_status() -> None:
    v = view(("httproutes", route("m", ["m.example.com"])),
             ("httproutes", route("n", ["n.example.com"])))
    gw = v.gateways[(GW_NS, "kserve-ingress-gateway")]
    status = g.gateway_status(gw, v, "127.0.0.1", now="T")
    assert status["addresses"] == [{"type": "IPAddress", "value": "127.0.0.1"}]
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Accepted": "True", "Programmed": "True"}
    [listener] = status["listeners"]
    assert listener["name"] == "http" and listener["attachedRoutes"] == 2
    assert listener["supportedKinds"] == [{"group": g.GATEWAY_GROUP, "kind": "HTTPRoute"}]
    assert {c["type"] for c in listener["conditions"]} == {
        "Accepted", "Programmed", "ResolvedRefs"}
    gw["status"] = status
    assert g.gateway_status(gw, v, "127.0.0.1", now="later") == status

    cls = g.gatewayclass_status(v.gatewayclasses[("", "local")], now="T")
    assert cls["conditions"][0]["type"] == "Accepted"
    assert cls["conditions"][0]["reason"] == "Accepted"


# ----------------------------------------------------------------- endpoints

def test_loopback_ports_annotation_maps_endpoints() -> None:
    svc = service("m-predictor")
    es = endpoint_slice("m-predictor", endpoint("local"), endpoint("kwok", ip="10.244.0.9"),
                        endpoint("unready", ready=False), endpoint("no-cond", ready=None),
                        endpoint("wrong-port"), endpoint("unseen"))
    pods = {(NS, "local"): pod("local", {"8080": 40123}), (NS, "kwok"): pod("kwok"),
            (NS, "unready"): pod("unready", {"8080": 40124}),
            (NS, "no-cond"): pod("no-cond", {"8080": 40125}),
            (NS, "wrong-port"): pod("wrong-port", {"9000": 40126})}
    assert g.endpoints_for(svc, 80, [es], pods) == [
        g.Endpoint("127.0.0.1", 40123), g.Endpoint("10.244.0.9", 8080),
        g.Endpoint("127.0.0.1", 40125)]
    assert g.endpoints_for(svc, 81, [es], pods) == []  # not a Service port


def test_slice_port_is_chosen_by_service_port_name() -> None:
    svc = {"metadata": {"name": "s", "namespace": NS},
           "spec": {"ports": [{"name": "http", "port": 80}, {"name": "grpc", "port": 81}]}}
    es = endpoint_slice("s", endpoint("p"))
    es["ports"] = [{"name": "grpc", "port": 9000}, {"name": "http", "port": 8080}]
    pods = {(NS, "p"): pod("p", {"8080": 1111, "9000": 2222})}
    assert g.endpoints_for(svc, 80, [es], pods) == [g.Endpoint("127.0.0.1", 1111)]
    assert g.endpoints_for(svc, 81, [es], pods) == [g.Endpoint("127.0.0.1", 2222)]


# ------------------------------------------------------------------- filters

def test_request_filters() -> None:
    headers: CIMultiDict[str] = CIMultiDict({"Host": "m.example.com", "X-Drop": "1"})
    filters = [
        {"type": "RequestHeaderModifier", "requestHeaderModifier": {
            "set": [{"name": "KServe-Isvc-Name", "value": "m"}],
            "add": [{"name": "X-Extra", "value": "a"}], "remove": ["x-drop"]}},
        {"type": "URLRewrite", "urlRewrite": {
            "hostname": "m-predictor.team.svc.cluster.local",
            "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}]
    path = g.apply_request_filters(filters, headers, "/serving/m/models", "/serving/m")
    assert path == "/v2/models"
    assert headers["Host"] == "m-predictor.team.svc.cluster.local"
    assert headers["KServe-Isvc-Name"] == "m" and headers["X-Extra"] == "a"
    assert "X-Drop" not in headers
    assert g.rewrite_path({"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"},
                          "/foo", "/foo") == "/"
    full = {"type": "ReplaceFullPath", "replaceFullPath": "/x"}
    assert g.rewrite_path(full, "/a/b", None) == "/x"


def test_unsupported_filter_is_not_accepted() -> None:
    mirror = [{"type": "RequestMirror", "requestMirror": {"backendRef": backend("x")}}]
    v = view(("httproutes", route("m", ["m.example.com"], rule(backend("s"), filters=mirror))))
    [parent] = g.attach_route(v.httproutes[(NS, "m")], v)
    assert (parent.accepted, parent.reason) == (False, "UnsupportedValue")


def test_parse_duration() -> None:
    assert g.parse_duration("60s") == 60
    assert g.parse_duration("1m30s") == 90
    assert g.parse_duration("500ms") == 0.5
    assert g.parse_duration("0s") is None and g.parse_duration(None) is None


# ------------------------------------------------------------------ Ingresses

def backend_of(chosen: g.CompiledMatch | None) -> str | None:
    return None if chosen is None else str(chosen.rule["backendRefs"][0]["name"])


def test_ingress_ownership_by_class_annotation_and_default_class() -> None:
    v = view(("ingressclasses", ingress_class("nginx", controller="k8s.io/ingress-nginx")))
    legacy = {g.INGRESS_CLASS_ANNOTATION: "slipway-local"}
    assert v.is_our_ingress(ingress())
    assert not v.is_our_ingress(ingress(cls="nginx"))
    assert not v.is_our_ingress(ingress(cls="missing"))
    assert v.is_our_ingress(ingress(cls=None, annotations=legacy))
    assert not v.is_our_ingress(ingress(cls=None, annotations={
        g.INGRESS_CLASS_ANNOTATION: "nginx"}))
    assert not v.is_our_ingress(ingress(cls="nginx", annotations=legacy))  # the field wins
    assert not v.is_our_ingress(ingress(cls=None))  # no class, and ours is not the default
    v.ingressclasses[("", "nginx")] = ingress_class(
        "nginx", controller="k8s.io/ingress-nginx", default=True)
    assert not v.is_our_ingress(ingress(cls=None))  # a default class, but not ours
    v.ingressclasses[("", "slipway-local")] = ingress_class(default=True)
    assert v.is_our_ingress(ingress(cls=None))
    assert not v.is_our_ingress(ingress(cls="nginx"))

    v.ingresses[(NS, "theirs")] = ingress("theirs", hosts=("t.example.com",), cls="nginx")
    assert select(v, "t.example.com") is None  # not routed: another controller's


def test_kserve_ingress_routes_both_hosts() -> None:
    v = view(("ingresses", ingress()))
    for host in ("m-team.example.com", "m-predictor-team.example.com"):
        chosen = select(v, host, "/v1/models/m:predict")
        assert isinstance(chosen, g.IngressMatch) and backend_of(chosen) == "m-predictor"
        assert chosen.rule["backendRefs"][0] == {"group": "", "kind": "Service",
                                                 "name": "m-predictor", "namespace": NS,
                                                 "port": 80}
    assert select(v, "other.example.com") is None
    summary = g.RouteTable.build(v).summary()
    assert "ingress team/m['m-team.example.com'] -> Prefix:/=[m-predictor:80*1]" in summary


def test_ingress_wildcard_host_matches_one_label_only() -> None:
    assert g.ingress_host_matches("*.example.com", "m-team.example.com")
    assert not g.ingress_host_matches("*.example.com", "a.b.example.com")
    assert not g.ingress_host_matches("*.example.com", "example.com")
    assert not g.ingress_host_matches("*.example.com", ".example.com")
    assert g.ingress_host_matches("M.Example.com", "m.example.com")
    v = view(("ingresses", ingress("wild", hosts=("*.example.com",),
                                   paths=[ing_path("wild-svc")])),
             ("ingresses", ingress("exact", hosts=("m.example.com",),
                                   paths=[ing_path("exact-svc")])),
             ("ingresses", ingress("any", hosts=("",), paths=[ing_path("any-svc")])))
    assert backend_of(select(v, "m.example.com")) == "exact-svc"
    assert backend_of(select(v, "n.example.com")) == "wild-svc"
    assert backend_of(select(v, "a.b.example.com")) == "any-svc"  # a rule without host


def test_ingress_paths_exact_then_longest_prefix_element_wise() -> None:
    v = view(("ingresses", ingress(hosts=("m.example.com",), paths=[
        ing_path("root", "/"), ing_path("foo", "/foo"),
        ing_path("foo-slash", "/foo/bar/", path_type="ImplementationSpecific"),
        ing_path("exact", "/foo/bar", path_type="Exact")])))

    def svc(path: str) -> str | None:
        return backend_of(select(v, "m.example.com", path))

    assert svc("/foo/bar") == "exact"  # Exact beats the equally long (or longer) Prefix
    assert svc("/foo/bar/") == "foo-slash"  # Exact /foo/bar does not match /foo/bar/
    assert svc("/foo/bar/baz") == "foo-slash"  # ImplementationSpecific matches as Prefix
    assert svc("/foo/baz") == "foo"
    assert svc("/foo") == "foo"
    assert svc("/foobar") == "root"  # element-wise: /foo does not match /foobar
    assert svc("/") == "root"
    assert g.path_prefix_matches("/foo", "/foo/bar")
    assert not g.path_prefix_matches("/foo", "/foobar")
    assert g.path_prefix_matches("/foo/", "/foo")  # a trailing slash on the prefix is ignored


def test_ingress_default_backend_catches_what_no_rule_matches() -> None:
    ing = ingress(hosts=("m.example.com",), paths=[ing_path("m-predictor", "/v1")])
    ing["spec"]["defaultBackend"] = {"service": {"name": "fallback", "port": {"number": 80}}}
    v = view(("ingresses", ing))
    assert backend_of(select(v, "m.example.com", "/v1/models")) == "m-predictor"
    assert backend_of(select(v, "m.example.com", "/v2")) == "fallback"
    assert backend_of(select(v, "other.example.org", "/v1")) == "fallback"


def test_httproute_wins_over_ingress_for_the_same_host() -> None:
    # A canary's HTTPRoute for a model's host takes over from KServe's Ingress for it.
    canary = route("m-canary", ["m-team.example.com"],
                   rule(backend("m-predictor", 90), backend("m-canary-predictor", 10),
                        path=("PathPrefix", "/v1")))
    v = view(("ingresses", ingress()), ("httproutes", canary))
    chosen = select(v, "m-team.example.com", "/v1/models/m:predict")
    assert chosen is not None and chosen.route["metadata"]["name"] == "m-canary"
    assert not isinstance(chosen, g.IngressMatch)
    # What the HTTPRoute does not match still reaches the Ingress, as do its other hosts.
    assert isinstance(select(v, "m-team.example.com", "/v2/models"), g.IngressMatch)
    assert isinstance(select(v, "m-predictor-team.example.com", "/v1"), g.IngressMatch)
    # An exact Ingress host is more specific than a wildcard or host-less HTTPRoute.
    v.httproutes[(NS, "m-canary")] = route("m-canary", ["*.example.com"])
    assert isinstance(select(v, "m-team.example.com", "/v1"), g.IngressMatch)
    assert select(v, "x.example.com", "/v1") is not None  # only the HTTPRoute matches


def test_named_service_port() -> None:
    svc = {"metadata": {"name": "m-predictor", "namespace": NS},
           "spec": {"ports": [{"name": "http", "port": 80}, {"name": "grpc", "port": 81}]}}
    assert g.service_port(svc, 81) == 81
    assert g.service_port(svc, "grpc") == 81
    assert g.service_port(svc, "http") == 80
    assert g.service_port(svc, "metrics") is None and g.service_port(svc, 82) is None
    v = view(("services", svc), ("ingresses", ingress(
        hosts=("m.example.com",), paths=[ing_path("m-predictor", port="grpc")])))
    chosen = select(v, "m.example.com")
    assert chosen is not None
    ref = chosen.rule["backendRefs"][0]
    assert ref["port"] == "grpc" and g.check_backend(ref, NS, v) is None
    assert g.check_backend({**ref, "port": "metrics"}, NS, v) == (
        "BackendNotFound", "Service team/m-predictor has no port metrics")


def test_ingress_status_body() -> None:
    ing = ingress()
    status = g.ingress_status(ing, "127.0.0.1")
    assert status == {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}
    ing["status"] = status
    assert g.ingress_status(ing, "127.0.0.1") == ing["status"]  # unchanged: nothing to write


# ------------------------------------------------- the proxy, against a real upstream

async def echo(request: web.BaseRequest) -> web.StreamResponse:
    body = await request.read()
    return web.json_response({"method": request.method, "path": request.raw_path,
                              "headers": dict(request.headers), "body": body.decode()},
                             headers={"X-Upstream": "yes"})


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def proxy() -> AsyncIterator[tuple[g.LocalGateway, str, int]]:
    upstream = RawTestServer(echo, host="127.0.0.1")
    await upstream.start_server()
    assert upstream.port is not None
    v = view(("httproutes", route("m", ["m-team.example.com"])),
             ("services", service("m-predictor")),
             ("endpointslices", endpoint_slice("m-predictor", endpoint("p1"))),
             ("pods", pod("p1", {"8080": upstream.port})))
    gw = g.LocalGateway(api=None, address="127.0.0.1")  # type: ignore[arg-type]
    gw.view = v
    gw.http = aiohttp.ClientSession(auto_decompress=False)
    front = RawTestServer(gw.handle, host="127.0.0.1")
    await front.start_server()
    assert front.port is not None
    yield gw, f"http://127.0.0.1:{front.port}", upstream.port
    await front.close()
    await upstream.close()
    await gw.http.close()


async def test_proxy_forwards_kserve_route(proxy: tuple[g.LocalGateway, str, int]) -> None:
    _, url, _ = proxy
    async with aiohttp.ClientSession() as s, s.post(
            f"{url}/v1/models/m:predict?x=1", data=b'{"instances": [1]}',
            headers={"Host": "m-team.example.com:8080"}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Upstream"] == "yes"
        assert resp.headers[g.BACKEND_HEADER] == "team/m-predictor"
        got = await resp.json()
    assert got["method"] == "POST" and got["path"] == "/v1/models/m:predict?x=1"
    assert got["body"] == '{"instances": [1]}'
    assert got["headers"]["Host"] == "m-team.example.com:8080"  # kept without URLRewrite
    assert got["headers"]["KServe-Isvc-Name"] == "m"
    assert got["headers"]["KServe-Isvc-Namespace"] == NS


async def test_proxy_errors(proxy: tuple[g.LocalGateway, str, int]) -> None:
    gw, url, _ = proxy
    async with aiohttp.ClientSession() as s:
        async with s.get(url, headers={"Host": "nope.example.com"}) as resp:
            assert resp.status == 404 and "nope.example.com" in await resp.text()

        gw.view.pods[(NS, "p1")] = pod("p1", {"8080": closed_port()})
        gw.changed("pods")
        async with s.get(url, headers={"Host": "m-team.example.com"}) as resp:
            assert resp.status == 502

        gw.view.endpointslices.clear()
        gw.changed("endpointslices")
        async with s.get(url, headers={"Host": "m-team.example.com"}) as resp:
            assert resp.status == 503 and "team/m-predictor" in await resp.text()

        gw.view.services.clear()
        gw.changed("services")
        async with s.get(url, headers={"Host": "m-team.example.com"}) as resp:
            assert resp.status == 500


async def test_proxy_forwards_by_ingress_with_named_port(
        proxy: tuple[g.LocalGateway, str, int]) -> None:
    gw, url, _ = proxy
    gw.view.ingresses[(NS, "n")] = ingress("n", hosts=("n-team.example.com",),
                                           paths=[ing_path("m-predictor", port="http")])
    gw.changed("ingresses")
    async with aiohttp.ClientSession() as s, s.get(
            f"{url}/v1/models/n", headers={"Host": "n-team.example.com"}) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers[g.BACKEND_HEADER] == "team/m-predictor"
        assert (await resp.json())["path"] == "/v1/models/n"


async def test_proxy_head(proxy: tuple[g.LocalGateway, str, int]) -> None:
    _, url, _ = proxy
    async with aiohttp.ClientSession() as s, s.head(
            f"{url}/x", headers={"Host": "m-team.example.com"}) as resp:
        assert resp.status == 200
        assert int(resp.headers["Content-Length"]) > 0  # the upstream's, body-less
        assert await resp.read() == b""


# ------------------------------- watches and status writes, against a fake API server

class FakeApiServer:
    """Just enough of an API server: LIST, WATCH, GET, PUT .../status with conflicts."""

    def __init__(self) -> None:
        self.rv = 100
        self.objects: dict[str, dict[tuple[str, str], Obj]] = {k: {} for k in g.RESOURCES}
        self.watchers: list[tuple[str, asyncio.Queue[Obj]]] = []
        self.puts: list[str] = []
        self.conflicts = 0  # answer this many PUTs with 409

    def upsert(self, plural: str, obj: Obj) -> None:
        self.rv += 1
        obj = json.loads(json.dumps(obj))
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = g.key_of(obj)
        etype = "MODIFIED" if key in self.objects[plural] else "ADDED"
        self.objects[plural][key] = obj
        for kind, queue in self.watchers:
            if kind == plural:
                queue.put_nowait({"type": etype, "object": obj})

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        parts = request.path.strip("/").split("/")
        parts = parts[2:] if parts[0] == "api" else parts[3:]
        ns = ""
        if parts[0] == "namespaces":
            ns, parts = parts[1], parts[2:]
        plural, name, sub = parts[0], *[*parts[1:], None, None][:2]
        store = self.objects[plural]
        if request.method == "GET" and name is None and request.query.get("watch"):
            resp = web.StreamResponse()
            await resp.prepare(request)
            queue: asyncio.Queue[Obj] = asyncio.Queue()
            self.watchers.append((plural, queue))
            while True:
                await resp.write(json.dumps(await queue.get()).encode() + b"\n")
        if request.method == "GET" and name is None:
            return web.json_response({"items": list(store.values()),
                                      "metadata": {"resourceVersion": str(self.rv)}})
        obj = store.get((ns, name or ""))
        if obj is None:
            return web.json_response({"message": "not found"}, status=404)
        if request.method == "GET":
            return web.json_response(obj)
        assert request.method == "PUT" and sub == "status"
        body = await request.json()
        self.puts.append(f"{plural}/{name}")
        if self.conflicts or body["metadata"]["resourceVersion"] != \
                obj["metadata"]["resourceVersion"]:
            self.conflicts = max(0, self.conflicts - 1)
            return web.json_response({"message": "conflict"}, status=409)
        self.upsert(plural, {**obj, "status": body["status"]})
        return web.json_response(self.objects[plural][(ns, name or "")])


async def eventually(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_watches_drive_status_without_write_loops(tmp_path: Path) -> None:
    fake = FakeApiServer()
    foreign = {"parentRef": {"name": "other"}, "controllerName": "example.com/other",
               "conditions": []}
    fake.upsert("gatewayclasses", gateway_class())
    fake.upsert("gatewayclasses", gateway_class(controller="example.com/other", name="theirs"))
    fake.upsert("gateways", gateway())
    fake.upsert("httproutes", route("m", ["m.example.com"], status={"parents": [foreign]}))
    fake.upsert("ingressclasses", ingress_class())
    fake.upsert("ingresses", ingress())
    fake.upsert("ingresses", ingress("theirs", cls="nginx"))
    server = RawTestServer(fake.handle, host="127.0.0.1")
    await server.start_server()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.port}"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))

    def parents() -> list[Obj]:
        return list(fake.objects["httproutes"][(NS, "m")].get("status", {}).get("parents", []))

    def resolved() -> str | None:
        ours = [p for p in parents() if p["controllerName"] == g.CONTROLLER_NAME]
        return ours[0]["conditions"][1]["status"] if ours else None

    async with g.KubeApi(str(kubeconfig)) as api:
        gw = g.LocalGateway(api, "127.0.0.1")
        tasks = [asyncio.create_task(gw.watch_kind(k)) for k in g.RESOURCES]
        tasks.append(asyncio.create_task(gw.status_loop()))
        try:
            await eventually(lambda: resolved() == "False")
            assert parents()[0] == foreign
            fake.conflicts = 1  # the next write meets a 409 and must retry
            fake.upsert("services", service("m-predictor"))
            await eventually(lambda: resolved() == "True")
            gc = fake.objects["gatewayclasses"]
            assert gc[("", "local")]["status"]["conditions"][0]["status"] == "True"
            assert "status" not in gc[("", "theirs")]
            gw_status = fake.objects["gateways"][(GW_NS, "kserve-ingress-gateway")]["status"]
            await eventually(lambda: gw_status["listeners"][0]["attachedRoutes"] == 1)
            assert gw.table().select("m.example.com", "GET", "/", CIMultiDict(), {}) is not None
            ings = fake.objects["ingresses"]
            await eventually(lambda: "status" in ings[(NS, "m")])
            assert ings[(NS, "m")]["status"] == {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}
            assert "status" not in ings[(NS, "theirs")]
            assert isinstance(gw.table().select("m-team.example.com", "GET", "/", CIMultiDict(),
                                                {}), g.IngressMatch)

            writes = len(fake.puts)
            await asyncio.sleep(0.5)
            assert len(fake.puts) == writes  # our own status events cause no further writes
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    await server.close()
