"""The single place that talks to the API server (besides Kopf itself).

A small urllib3 client, synchronous, so each call runs in a worker thread (slipway.runner
sizes the pool). Paths are built from a small kind table instead of discovery: it is faster
and every kind Slipway touches is known up front. Credentials come from slipway.credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import urllib3

from slipway import credentials, metrics

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
_first_use = threading.Lock()
_connection: tuple[urllib3.PoolManager, credentials.Credentials] | None = None


class KubeError(RuntimeError):
    """An API call failed; `status` is the HTTP status (0 when unknown)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def connect(kubeconfig: str | None = None) -> tuple[urllib3.PoolManager,
                                                    credentials.Credentials]:
    """(Re)connect: to *kubeconfig*'s current context, else in-cluster or $KUBECONFIG."""
    global _connection
    creds = credentials.load(kubeconfig)
    # One pooled connection per API call in flight (slipway.runner.API_THREADS), so that a
    # burst never drops and re-opens connections.
    pool = urllib3.PoolManager(
        num_pools=2, maxsize=POOL_SIZE, retries=False,
        ssl_context=creds.ssl_context() if creds.server.startswith("https") else None)
    with _lock:
        _connection = pool, creds
    return pool, creds


def connection() -> tuple[urllib3.PoolManager, credentials.Credentials]:
    """The shared connection pool, connected on first use."""
    with _lock:
        current = _connection
    if current is not None:
        return current
    with _first_use:  # threads that arrive together build one pool, not one each
        return _connection or connect()


def request(method: str, url: str, query: list[tuple[str, Any]] | None = None,
            body: bytes | None = None, content_type: str | None = None,
            timeout: urllib3.Timeout | float = 30.0, stream: bool = False
            ) -> urllib3.BaseHTTPResponse:
    """One HTTP request to the API server (blocking). A 401 fetches a fresh token (a rotated
    service-account token, an expired exec credential) and tries once more."""
    pool, creds = connection()
    full = creds.server + url + ("?" + urlencode(query) if query else "")
    for attempt in (1, 2):
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        auth = creds.authorization()
        if auth:
            headers["Authorization"] = auth
        resp = pool.request(method, full, body=body, headers=headers, timeout=timeout,
                            preload_content=not stream, redirect=False)
        if resp.status != 401 or attempt == 2 or not (creds.token_file or creds.exec_config):
            return resp
        resp.drain_conn()
        creds.forget_token()
    raise AssertionError("unreachable")


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


def call(method: str, url: str, body: Any = None, content_type: str = "application/json",
          query: list[tuple[str, Any]] | None = None, verb: str | None = None
          ) -> dict[str, Any] | None:
    """One API call (blocking): the decoded object; None for a 404 on GET or DELETE.
    Raises KubeError (status 0: transient, the server was not reached)."""
    metrics.API_REQUESTS.labels(verb or method, resource_of(url)).inc()
    data = None if body is None else json.dumps(body).encode()
    try:
        resp = request(method, url, query, data, content_type if data is not None else None)
    except (OSError, urllib3.exceptions.HTTPError, credentials.CredentialsError) as exc:
        raise KubeError(f"{method} {url}: {exc}", 0) from exc  # transient
    if resp.status == 404 and method in ("GET", "DELETE"):
        return None
    payload: Any = None
    with contextlib.suppress(ValueError, TypeError):
        payload = json.loads(resp.data or b"null")
    if not 200 <= resp.status < 300:
        message = (payload.get("message") if isinstance(payload, dict)
                   else resp.data.decode(errors="replace"))
        raise KubeError(f"{method} {url}: {resp.status} {message}", resp.status)
    return payload if isinstance(payload, dict) else None


async def apply(manifest: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
    """Server-side apply: create or converge the fields Slipway owns, idempotently."""
    meta = manifest["metadata"]
    url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"],
               subresource)
    result = await asyncio.to_thread(
        call, "PATCH", url, manifest, "application/apply-patch+yaml",
        [("fieldManager", FIELD_MANAGER), ("force", "true")],
    )
    assert result is not None
    return result


async def create(manifest: dict[str, Any]) -> dict[str, Any]:
    """Plain create (POST). Used where later updates must not own every field."""
    meta = manifest["metadata"]
    url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"))
    result = await asyncio.to_thread(
        call, "POST", url, manifest, "application/json", [("fieldManager", FIELD_MANAGER)])
    assert result is not None
    return result


async def replace(manifest: dict[str, Any]) -> dict[str, Any]:
    """PUT: replace the whole object; with metadata.resourceVersion set this is a
    compare-and-swap (409 when someone else wrote it first)."""
    meta = manifest["metadata"]
    url = path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
    result = await asyncio.to_thread(
        call, "PUT", url, manifest, "application/json", [("fieldManager", FIELD_MANAGER)])
    assert result is not None
    return result


async def get(api_version: str, kind: str, namespace: str | None,
              name: str) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    return await asyncio.to_thread(call, "GET", path(api_version, kind, namespace, name))


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
            call, "GET", path(api_version, kind, namespace), None, "application/json", query,
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
        call, "PATCH", path(api_version, kind, namespace, name, subresource), body,
        "application/merge-patch+json")


async def delete(api_version: str, kind: str, namespace: str | None, name: str,
                 propagation: str = "Background") -> None:
    await asyncio.to_thread(
        call, "DELETE", path(api_version, kind, namespace, name),
        {"propagationPolicy": propagation})
