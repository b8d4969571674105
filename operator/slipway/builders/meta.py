"""Metadata every child object carries: deterministic names, labels, owners."""

from __future__ import annotations

from typing import Any

from slipway.api.common import MANAGED_BY


def owner_reference(parent: dict[str, Any]) -> dict[str, Any]:
    """A controller ownerReference, so the garbage collector removes the child."""
    meta = parent["metadata"]
    return {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(parent_kind: str, parent_name: str) -> dict[str, str]:
    return {**MANAGED_BY, f"slipway.dev/{parent_kind.lower()}": parent_name}


def child_metadata(parent: dict[str, Any], name: str,
                   extra_labels: dict[str, str] | None = None,
                   annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta = parent["metadata"]
    out: dict[str, Any] = {
        "name": name,
        "namespace": meta["namespace"],
        "labels": {**child_labels(parent["kind"], meta["name"]), **(extra_labels or {})},
        "ownerReferences": [owner_reference(parent)],
    }
    if annotations:
        out["annotations"] = annotations
    return out
