"""The single place that talks to the API server (besides Kopf itself).

The official client is synchronous, so each call runs in a worker thread.
Paths are built from a small kind table instead of discovery: it is faster and
every kind Slipway touches is known up front.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from slipway import metrics

FIELD_MANAGER = "slipway"
POOL_SIZE = 32  # connections kept to the API server

# (apiVersion, kind) -> plural, for building REST paths without discovery.
PLURALS: dict[tuple[str, str], str] = {
    ("v1", "Pod"): "pods",
    ("v1", "Service"): "services",
    ("v1", "Event"): "events",
    ("v1", "ConfigMap"): "configmaps",
    ("batch/v1", "Job"): "jobs",
    ("coordination.k8s.io/v1", "Lease"): "leases",
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservices",
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "clusterservingruntimes",
    ("slipway.dev/v1alpha1", "TrainingJob"): "trainingjobs",
    ("slipway.dev/v1alpha1", "ModelDeployment"): "modeldeployments",
    ("slipway.dev/v1alpha1", "Canary"): "canaries",
}

_lock = threading.Lock()
_api: client.ApiClient | None = None


class KubeError(RuntimeError):
    """An API call failed; `status` is the HTTP status (0 when unknown)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def api_client() -> client.ApiClient:
    """One shared client: in-cluster config when running in a pod, else KUBECONFIG."""
    global _api
    with _lock:
        if _api is None:
            configuration = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                # KUBECONFIG as it is now (the client reads it once, at import).
                config.load_kube_config(config_file=os.environ.get("KUBECONFIG"),
                                        client_configuration=configuration)
            # One pooled connection per API call in flight (slipway.runner.API_THREADS);
            # the default pool (5 per core) drops and re-opens connections under a burst.
            configuration.connection_pool_maxsize = POOL_SIZE
            _api = client.ApiClient(configuration)
        return _api


def path(api_version: str, kind: str, namespace: str | None, name: str | None = None,
         subresource: str | None = None) -> str:
    plural = PLURALS.get((api_version, kind), kind.lower() + "s")
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    parts = [base]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def resource_of(url: str) -> str:
    """The resource a REST path names: the segment after the group/version or namespace."""
    parts = url.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    if len(rest) >= 2 and rest[0] == "namespaces":
        rest = rest[2:]
    return rest[0] if rest else "namespaces"


def _call(method: str, url: str, body: Any = None, content_type: str = "application/json",
          query: list[tuple[str, Any]] | None = None, verb: str | None = None
          ) -> dict[str, Any] | None:
    metrics.API_REQUESTS.labels(verb or method, resource_of(url)).inc()
    api = api_client()
    headers = {"Accept": "application/json", "Content-Type": content_type}
    method, full_url, headers, body, post = api.param_serialize(
        method=method, resource_path=url, query_params=query or [], header_params=headers,
        body=body, auth_settings=["BearerToken"])
    try:
        resp = api.call_api(method, full_url, headers, body, post, _request_timeout=30)
        resp.read()
    except (ApiException, OSError, urllib3.exceptions.HTTPError) as exc:  # transient
        raise KubeError(f"{method} {url}: {exc}", 0) from exc
    if resp.status == 404 and method in ("GET", "DELETE"):
        return None
    payload: Any = None
    with contextlib.suppress(ValueError, TypeError):
        payload = json.loads(resp.data or b"null")
    if not 200 <= resp.status < 300:
        message = payload.get("message") if isinstance(payload, dict) else resp.data
        raise KubeError(f"{method} {url}: {resp.status} {message}", resp.status)
    return payload if isinstance(payload, dict) else None


async def apply(manifest: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
    """Server-side apply: create or converge the fields Slipway owns, idempotently."""
    meta = manifest["metadata"]
    url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"],
               subresource)
    result = await asyncio.to_thread(
        _call, "PATCH", url, manifest, "application/apply-patch+yaml",
        [("fieldManager", FIELD_MANAGER), ("force", "true")],
    )
    assert result is not None
    return result


async def create(manifest: dict[str, Any]) -> dict[str, Any]:
    """Plain create (POST). Used where later updates must not own every field."""
    meta = manifest["metadata"]
    url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
    result = await asyncio.to_thread(
        _call, "POST", url, manifest, "application/json", [("fieldManager", FIELD_MANAGER)])
    assert result is not None
    return result


async def replace(manifest: dict[str, Any]) -> dict[str, Any]:
    """PUT: replace the whole object; with metadata.resourceVersion set this is a
    compare-and-swap (409 when someone else wrote it first)."""
    meta = manifest["metadata"]
    url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
    result = await asyncio.to_thread(
        _call, "PUT", url, manifest, "application/json", [("fieldManager", FIELD_MANAGER)])
    assert result is not None
    return result


async def get(api_version: str, kind: str, namespace: str | None,
              name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    return await asyncio.to_thread(_call, "GET", path(api_version, kind, namespace, name))


async def list_objects(api_version: str, kind: str, namespace: str | None,
                       label_selector: str | None = None) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    async for page in list_pages(api_version, kind, namespace, label_selector, limit=0):
        items.extend(page)
    return items


async def list_pages(api_version: str, kind: str, namespace: str | None,
                     label_selector: str | None = None, limit: int = 500
                     ) -> AsyncIterator[list[dict[str, Any]]]:
    """LIST in pages of *limit* (0: one page), so a caller that handles a page at a time
    holds a page, not 10,000 objects. A continue token the server has expired (410) raises
    KubeError: the caller starts over on its next pass."""
    async for items, _ in list_pages_with_meta(api_version, kind, namespace, label_selector,
                                               limit):
        yield items


async def list_pages_with_meta(api_version: str, kind: str, namespace: str | None,
                               label_selector: str | None = None, limit: int = 500
                               ) -> AsyncIterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """`list_pages`, each page with the list's metadata (its resourceVersion, for a watch)."""
    token: str | None = None
    while True:
        query: list[tuple[str, Any]] = []
        if label_selector:
            query.append(("labelSelector", label_selector))
        if limit:
            query.append(("limit", limit))
        if token:
            query.append(("continue", token))
        result = await asyncio.to_thread(
            _call, "GET", path(api_version, kind, namespace), None, "application/json", query,
            "LIST")
        items = list((result or {}).get("items", []))
        for item in items:  # list items carry no apiVersion/kind of their own
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        meta = (result or {}).get("metadata") or {}
        yield items, meta
        token = meta.get("continue")
        if not token:
            return


async def patch(api_version: str, kind: str, namespace: str | None, name: str,
                body: dict[str, Any], subresource: str | None = None) -> dict[str, Any] | None:
    """A JSON merge patch."""
    return await asyncio.to_thread(
        _call, "PATCH", path(api_version, kind, namespace, name, subresource), body,
        "application/merge-patch+json")


async def delete(api_version: str, kind: str, namespace: str | None, name: str,
                 propagation: str = "Background") -> None:
    await asyncio.to_thread(
        _call, "DELETE", path(api_version, kind, namespace, name),
        {"propagationPolicy": propagation})
