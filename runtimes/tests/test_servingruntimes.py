"""The ClusterServingRuntime manifests validate against KServe's CRD schema and carry the
settings Slipway relies on (formats, protocols, metrics annotations, hardened pod)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

RUNTIMES_DIR = Path(__file__).resolve().parents[1] / "servingruntimes"
# openAPIV3Schema of serving.kserve.io/v1alpha1 ClusterServingRuntime, from KServe v0.16.0's CRD
# (descriptions stripped to keep it small).
SCHEMA = json.loads(
    (Path(__file__).parent / "crd/clusterservingruntime-v1alpha1.schema.json").read_text()
)
TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
}


def schema_errors(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """A small structural validator: unknown fields, types, required fields, enums."""
    if schema.get("x-kubernetes-int-or-string"):
        ok = isinstance(value, int | str) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected int or string"]
    if schema.get("x-kubernetes-preserve-unknown-fields") and "properties" not in schema:
        return []
    errors: list[str] = []
    expected = schema.get("type")
    if expected:
        bad_bool = isinstance(value, bool) and expected in ("integer", "number")
        if not isinstance(value, TYPES[expected]) or bad_bool:
            return [f"{path}: expected {expected}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{path}.{key}: required")
        for key, sub in value.items():
            if key in props:
                errors += schema_errors(sub, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += schema_errors(sub, extra, f"{path}.{key}")
            elif not extra and "properties" in schema:  # no properties: free-form (metadata)
                errors.append(f"{path}.{key}: unknown field")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((RUNTIMES_DIR / f"{name}.yaml").read_text())
    return doc


RUNTIMES = [
    ("slipway-onnx", "onnx"),
    ("slipway-sklearn", "sklearn"),
    ("slipway-xgboost", "xgboost"),
]


def test_every_manifest_is_covered() -> None:
    assert sorted(p.stem for p in RUNTIMES_DIR.glob("*.yaml")) == [n for n, _ in RUNTIMES]


@pytest.mark.parametrize(("name", "fmt"), RUNTIMES)
def test_manifest_validates_against_kserve_crd(name: str, fmt: str) -> None:
    doc = load(name)
    assert doc["apiVersion"] == f"{SCHEMA['group']}/{SCHEMA['version']}"
    assert doc["kind"] == SCHEMA["kind"]
    assert schema_errors(doc, SCHEMA["openAPIV3Schema"]) == []


@pytest.mark.parametrize(("name", "fmt"), RUNTIMES)
def test_manifest_settings(name: str, fmt: str) -> None:
    doc = load(name)
    spec = doc["spec"]
    assert doc["metadata"]["name"] == name
    assert spec["supportedModelFormats"] == [
        {"name": fmt, "version": "1", "autoSelect": True, "priority": 2}
    ]
    # grpc-v2 on 8081 (kserve's default gRPC port, passed explicitly).
    assert spec["protocolVersions"] == ["v1", "v2", "grpc-v2"]
    assert spec["annotations"] == {
        "prometheus.kserve.io/port": "8080",
        "prometheus.kserve.io/path": "/metrics",
    }
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert container["command"] == [f"slipway-{fmt}-server"]
    assert container["args"] == [
        "--model_dir=/mnt/models",
        "--model_name={{.Name}}",
        "--http_port=8080",
        "--grpc_port=8081",
    ]
    # One declared port: Knative serves a single container port (gRPC's is declared on the
    # InferenceService that uses grpc-v2).
    assert container["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    assert set(container["resources"]) == {"requests", "limits"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 1000
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # A read-only root filesystem needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_validator_rejects_bad_manifests() -> None:
    doc = load("slipway-sklearn")
    doc["spec"]["supportedModelFormat"] = doc["spec"].pop("supportedModelFormats")  # typo
    doc["spec"]["containers"][0]["securityContext"]["runAsUser"] = "1000"  # wrong type
    del doc["spec"]["containers"][0]["name"]  # required
    errors = schema_errors(doc, SCHEMA["openAPIV3Schema"])
    assert ".spec.supportedModelFormat: unknown field" in errors
    assert ".spec.containers[0].securityContext.runAsUser: expected integer, got str" in errors
    assert ".spec.containers[0].name: required" in errors
