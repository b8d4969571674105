"""Kubernetes Events on our resources, posted through Kopf's event queue."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import kopf


def emit(obj: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    """Post an Event about *obj* (a body or plain dict with apiVersion/kind/metadata)."""
    kopf.event(cast(kopf.Body, obj), type=type, reason=reason, message=message[:1024])
