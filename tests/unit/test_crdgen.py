"""The CRDs in crds/ are generated from the API models and must stay in sync."""

from __future__ import annotations

from pathlib import Path

import yaml

from slipway.api import ALL_CRDS
from slipway.crdgen import crd_manifest, structural, write_all

ROOT = Path(__file__).resolve().parents[2]


def test_checked_in_crds_are_up_to_date() -> None:
    stale = write_all(ROOT / "crds", check=True)
    assert stale == [], f"run `slipway crds`: {stale}"


def test_every_crd_has_names_columns_status_and_descriptions() -> None:
    for info in ALL_CRDS:
        crd = crd_manifest(info)
        names = crd["spec"]["names"]
        assert names["categories"] == ["slipway"] and names["shortNames"]
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        assert any(c["name"] == "Age" for c in version["additionalPrinterColumns"])
        root = version["schema"]["openAPIV3Schema"]
        assert root["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True
        for field, schema in root["properties"]["spec"]["properties"].items():
            assert schema.get("description"), f"{info.kind}.spec.{field} lacks a description"


def test_structural_conversion_rules() -> None:
    assert structural({"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}) == \
        {"type": "integer"}
    assert structural({"anyOf": [{"type": "integer"}, {"type": "string"}]}) == \
        {"x-kubernetes-int-or-string": True}
    assert structural({"type": "object", "additionalProperties": True}) == \
        {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert structural({"type": "integer", "exclusiveMinimum": 0}) == \
        {"type": "integer", "minimum": 0, "exclusiveMinimum": True}
    assert structural({"const": "torchrun", "title": "x"}) == {"enum": ["torchrun"]}


def test_crd_files_parse_as_yaml() -> None:
    for path in (ROOT / "crds").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        assert doc["kind"] == "CustomResourceDefinition"
