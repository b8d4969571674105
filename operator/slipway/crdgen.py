"""Generate structural CustomResourceDefinitions from the pydantic API models.

The models are the single source of truth: field descriptions become
`kubectl explain` text, pydantic constraints become OpenAPI bounds, and CEL
rules ride along in `json_schema_extra` as `x-kubernetes-validations`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from slipway.api import ALL_CRDS
from slipway.api.common import CATEGORY, GROUP, VERSION, CRDInfo

# Keys of JSON Schema that a Kubernetes structural schema accepts as they are.
_KEEP = {
    "type", "description", "properties", "required", "items", "enum", "format", "pattern",
    "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "minProperties",
    "maxProperties", "default", "nullable", "additionalProperties",
}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every $ref so each field carries its own schema."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return _resolve({**target, **extra}, defs)
        return {k: _resolve(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, defs) for v in node]
    return node


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """Turn one resolved pydantic JSON schema node into a structural OpenAPI v3 node."""
    s = dict(schema)
    for combo in ("anyOf", "oneOf"):
        if combo in s:  # Optional[X] is anyOf[X, null]; int|str is a Kubernetes int-or-string.
            options = [o for o in s.pop(combo) if o.get("type") != "null"]
            types = {o.get("type") for o in options}
            if len(options) == 1:
                s = {**options[0], **s}
            elif types <= {"integer", "string"}:
                s["x-kubernetes-int-or-string"] = True
            else:
                raise ValueError(f"cannot express union {options} structurally")
    if "allOf" in s and len(s["allOf"]) == 1:
        s = {**s.pop("allOf")[0], **s}
    if "const" in s:
        s["enum"] = [s.pop("const")]
    if "exclusiveMinimum" in s:  # JSON Schema 2020 number -> OpenAPI 3.0 boolean form
        s["minimum"], s["exclusiveMinimum"] = s.pop("exclusiveMinimum"), True
    if "exclusiveMaximum" in s:
        s["maximum"], s["exclusiveMaximum"] = s.pop("exclusiveMaximum"), True
    if s.get("default", 0) is None or isinstance(s.get("default"), dict | list):
        s.pop("default")  # only scalar defaults: the apiserver applies them on read

    out: dict[str, Any] = {}
    for key, value in s.items():
        if key.startswith("x-kubernetes-") or key in ("exclusiveMinimum", "exclusiveMaximum"):
            out[key] = value
        elif key == "properties":
            out["properties"] = {k: structural(v) for k, v in value.items()}
        elif key == "items":
            out["items"] = structural(value)
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif value is not False:
                out["additionalProperties"] = structural(value)
        elif key in _KEEP:
            out[key] = value
    if out.get("type") == "object" and not {"properties", "additionalProperties"} & out.keys():
        out["x-kubernetes-preserve-unknown-fields"] = True  # free-form object (dict[str, Any])
    if "x-kubernetes-int-or-string" in out:
        out.pop("type", None)
    return out


def model_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return structural(_resolve(raw, defs))


def crd_manifest(info: CRDInfo) -> dict[str, Any]:
    spec_schema = model_schema(info.spec_model)
    status_schema = model_schema(info.status_model)
    # Kopf keeps its progress and diff-base in status; keep the apiserver from pruning them.
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    root: dict[str, Any] = {
        "type": "object",
        "description": info.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    if info.root_validations:
        root["x-kubernetes-validations"] = [dict(r) for r in info.root_validations]
    columns = [
        {k: v for k, v in {
            "name": c.name, "type": c.type, "jsonPath": c.json_path,
            "description": c.description or None, "priority": c.priority or None,
        }.items() if v is not None}
        for c in info.printer_columns
    ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.name, "labels": {"app.kubernetes.io/part-of": "slipway"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": columns,
                "schema": {"openAPIV3Schema": root},
            }],
        },
    }


def render(info: CRDInfo) -> str:
    header = "# Generated by `slipway crds` from slipway.api; do not edit by hand.\n"
    return header + yaml.safe_dump(crd_manifest(info), sort_keys=False, width=100)


def write_all(out_dir: Path, check: bool = False) -> list[Path]:
    """Write (or with *check*, compare) every CRD file; return the stale or written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    changed = []
    for info in ALL_CRDS:
        path = out_dir / f"{info.name}.yaml"
        text = render(info)
        if path.exists() and path.read_text() == text:
            continue
        changed.append(path)
        if not check:
            path.write_text(text)
    return changed
