"""The TrainingJob API model: the podTemplate schema the apiserver checks at apply time.

The rules themselves are exercised on a real apiserver in
tests/integration/test_trainingjob_validation.py; these tests pin their shape."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from slipway.api import trainingjob as api
from slipway.builders import trainingjob as builder
from slipway.crdgen import crd_manifest


def pod_template_schema() -> dict[str, Any]:
    root = crd_manifest(api.CRD)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return dict(root["properties"]["spec"]["properties"]["podTemplate"])


def walk(node: Any, path: str = "podTemplate") -> Any:
    if isinstance(node, dict):
        yield path, node
        for key, value in node.get("properties", {}).items():
            yield from walk(value, f"{path}.{key}")
        if "items" in node:
            yield from walk(node["items"], f"{path}[]")


def test_trainer_name_matches_the_builder() -> None:
    assert api.TRAINER_CONTAINER == builder.CONTAINER


def test_pod_spec_stays_a_plain_dict_for_the_merge() -> None:
    spec = api.TrainingJobSpec.model_validate({"image": "i", "podTemplate": {"spec": {
        "containers": [{"name": "trainer", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}],
        "hostIPC": True}}})
    assert spec.pod_template is not None
    assert spec.pod_template.spec == {
        "containers": [{"name": "trainer", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}],
        "hostIPC": True}
    # The apiserver checked the shape; the operator does not re-judge stored objects.
    lax = api.TrainingJobSpec.model_validate(
        {"image": "i", "podTemplate": {"spec": {"containers": "oops"}}})
    assert lax.pod_template is not None and lax.pod_template.spec == {"containers": "oops"}
    with pytest.raises(ValidationError, match=r"spec\.podTemplate\.spec must be an object"):
        api.TrainingJobSpec.model_validate({"image": "i", "podTemplate": {"spec": ["x"]}})


def test_pod_spec_schema_types_only_the_merged_keys_and_keeps_the_rest() -> None:
    spec = pod_template_schema()["properties"]["spec"]
    assert spec["x-kubernetes-preserve-unknown-fields"] is True
    assert set(spec["properties"]) == {"restartPolicy", "containers", "initContainers",
                                       "volumes"}
    for key in ("containers", "initContainers", "volumes"):
        lst = spec["properties"][key]
        assert lst["x-kubernetes-list-type"] == "map"
        assert lst["x-kubernetes-list-map-keys"] == ["name"]
        assert "name" in lst["items"]["required"]
        assert lst["items"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["properties"]["initContainers"]["items"]["required"] == ["name", "image"]
    rules = [r["rule"] for r in spec["properties"]["containers"]["items"][
        "x-kubernetes-validations"]]
    assert "self.name == 'trainer' || has(self.image)" in rules
    assert "self.name != 'trainer' || !has(self.image)" in rules
    assert spec["properties"]["restartPolicy"]["x-kubernetes-validations"][0]["rule"] == \
        "self == 'Never'"


def test_every_cel_rule_under_pod_template_has_bounded_inputs() -> None:
    # Unbounded lists or maps make the apiserver's cost estimate refuse the whole CRD.
    seen = 0
    for path, node in walk(pod_template_schema()):
        if node.get("type") == "array":
            assert "maxItems" in node, path
        if node.get("x-kubernetes-validations") and node.get("type") == "object" \
                and "additionalProperties" in node:
            assert "maxProperties" in node, path
        for rule in node.get("x-kubernetes-validations", []):
            seen += 1
            assert rule["message"], path
    assert seen >= 6


def test_messages_name_the_pod_template_path() -> None:
    for path, node in walk(pod_template_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            assert "spec.podTemplate." in rule["message"], (path, rule)


def test_descriptions_document_trainer_and_restart_policy() -> None:
    schema = pod_template_schema()
    for text in (schema["description"], schema["properties"]["spec"]["description"]):
        assert "trainer" in text and "Never" in text
    containers = schema["properties"]["spec"]["properties"]["containers"]
    assert "trainer" in containers["description"]


@pytest.mark.parametrize("key", ["team", "example.com/tier", "slipway.dev/fake-duration",
                                 "a.b-c_d", "x" * 63, "a-b.c/" + "x" * 63])
def test_qualified_name_pattern_accepts(key: str) -> None:
    assert re.match(api.QUALIFIED_NAME, key)


@pytest.mark.parametrize("key", ["-team", "team-", "a/b/c", "x" * 64, "Example.com/x",
                                 "/x", "a b", ""])
def test_qualified_name_pattern_refuses(key: str) -> None:
    assert not re.match(api.QUALIFIED_NAME, key)


@pytest.mark.parametrize(("value", "ok"), [("", True), ("nlp", True), ("a.b_c-d", True),
                                           ("-a", False), ("a b", False), ("a_", False)])
def test_label_value_pattern(value: str, ok: bool) -> None:
    assert bool(re.match(api.LABEL_VALUE, value)) is ok
