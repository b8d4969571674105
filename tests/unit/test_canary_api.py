"""The Canary API model: schedule validation in pydantic and in the generated CRD's CEL rules.
(The Canary CRD is not installed until its controller ships; see issue notes.)"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from slipway.api.canary import CRD, CanarySpec
from slipway.crdgen import crd_manifest


def spec(**kw: Any) -> CanarySpec:
    return CanarySpec.model_validate({"targetRef": {"name": "iris"}, **kw})


def test_step_weight_schedule_ends_at_max_weight() -> None:
    assert spec(stepWeight=10, maxWeight=50).weights() == [10, 20, 30, 40, 50]
    assert spec(stepWeight=20, maxWeight=50).weights() == [20, 40, 50]
    assert spec(steps=[1, 5, 25, 50]).weights() == [1, 5, 25, 50]


@pytest.mark.parametrize("kw, message", [
    ({}, "exactly one of spec.steps and spec.stepWeight"),
    ({"steps": [5], "stepWeight": 5}, "exactly one of spec.steps and spec.stepWeight"),
    ({"stepWeight": 60, "maxWeight": 50}, "spec.stepWeight must be at most spec.maxWeight"),
    ({"steps": [5, 5]}, "strictly increasing"),
    ({"steps": [0, 5]}, "between 1 and 100"),
])
def test_bad_schedules_are_rejected(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**kw)


def test_defaults_follow_the_documented_policy() -> None:
    s = spec(stepWeight=10)
    a = s.analysis
    assert (s.interval, s.max_weight, a.threshold, a.min_samples, a.no_data,
            a.consecutive_error_limit) == ("1m", 50, 3, 20, "pause", 4)


def test_crd_carries_names_columns_and_cel_rules() -> None:
    crd = crd_manifest(CRD)
    assert crd["spec"]["names"]["shortNames"] == ["canary"]
    version = crd["spec"]["versions"][0]
    # The issue's columns, in its order: PHASE, STABLE, CANARY, WEIGHT, FAILED, LAST CHECK, AGE.
    assert [c["name"] for c in version["additionalPrinterColumns"]][:7] == [
        "Phase", "Stable", "Canary", "Weight", "Failed", "Last Check", "Age"]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["message"] for r in spec_schema["x-kubernetes-validations"]]
    assert "set exactly one of spec.steps and spec.stepWeight" in rules
    metric = spec_schema["properties"]["analysis"]["properties"]["metrics"]["items"]
    assert any("built-in metric" in r["message"] for r in metric["x-kubernetes-validations"])
    assert metric["properties"]["compare"]["enum"] == ["Absolute", "RelativeToStable"]
    assert spec_schema["properties"]["steps"]["items"] == {
        "type": "integer", "minimum": 1, "maximum": 100}
