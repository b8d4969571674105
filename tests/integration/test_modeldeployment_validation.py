"""The ModelDeployment CRD on the real apiserver: bad specs are rejected with messages that
name the field; the samples apply cleanly. No operator needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import Kubectl

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "manifests" / "samples")
                 .glob("modeldeployment-*.yaml"))
MODEL = {"format": "sklearn", "uri": "s3://models/iris/v1", "version": "v1"}


def md(spec: dict[str, Any], name: str = "bad") -> dict[str, Any]:
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name}, "spec": spec}


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("no-source", md({}), "spec.model or spec.fromTrainingJob"),
    ("both-sources", md({"model": MODEL, "fromTrainingJob": "train"}),
     "exactly one of spec.model or spec.fromTrainingJob"),
    ("format-with-model", md({"model": MODEL, "format": "sklearn"}), "spec.format"),
    ("bad-format", md({"model": {**MODEL, "format": "onnx"}}), "spec.model.format"),
    ("bad-scheme", md({"model": {**MODEL, "uri": "ftp://host/m"}}), "spec.model.uri"),
    ("no-scheme", md({"model": {**MODEL, "uri": "/models/iris"}}), "spec.model.uri"),
    ("no-uri", md({"model": {"format": "sklearn"}}), "spec.model.uri"),
    ("min-gt-max", md({"model": MODEL, "replicas": {"min": 4, "max": 2}}), "spec.replicas.min"),
    ("negative-min", md({"model": MODEL, "replicas": {"min": -1}}), "spec.replicas.min"),
    ("zero-max", md({"model": MODEL, "replicas": {"max": 0}}), "spec.replicas.max"),
    ("too-many-gpus", md({"model": MODEL, "gpus": 17}), "spec.gpus"),
    ("negative-gpus", md({"model": MODEL, "gpus": -1}), "spec.gpus"),
    ("bad-protocol", md({"model": MODEL, "protocol": "grpc"}), "spec.protocol"),
    ("bad-mode", md({"model": MODEL, "deploymentMode": "Serverless"}), "spec.deploymentMode"),
    ("bad-metric", md({"model": MODEL, "autoscaling": {"metric": "gpu", "target": 5}}),
     "spec.autoscaling.metric"),
    ("zero-target", md({"model": MODEL, "autoscaling": {"metric": "cpu", "target": 0}}),
     "spec.autoscaling.target"),
    ("bad-runtime", md({"model": MODEL, "runtime": "Slipway_SKLearn"}), "spec.runtime"),
    ("bad-tj-name", md({"fromTrainingJob": "Train_1"}), "spec.fromTrainingJob"),
    ("bad-version", md({"model": {**MODEL, "version": "v1/../x"}}), "spec.model.version"),
    ("bad-cpu", md({"model": MODEL, "resources": {"cpu": "two"}}), "spec.resources.cpu"),
    ("bad-name", md({"model": MODEL}, name="9lives"), "metadata.name"),
    ("long-name", md({"model": MODEL}, name="m" * 46), "metadata.name"),
]


@pytest.mark.parametrize(("case", "obj", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_spec_rejected(kubectl: Kubectl, namespace: str, case: str,
                               obj: dict[str, Any], field: str) -> None:
    obj["metadata"]["namespace"] = namespace
    proc = kubectl("create", "-f", "-", input=yaml.safe_dump(obj), check=False)
    assert proc.returncode != 0, f"{case} was accepted"
    assert "Invalid" in proc.stderr or "invalid" in proc.stderr, proc.stderr
    assert field in proc.stderr, f"{case}: {field!r} not in:\n{proc.stderr}"


def test_valid_spec_gets_defaults(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(md({"model": MODEL},
                                                                          name="ok")))
    obj = kubectl.get("modeldeployment", "ok", namespace)
    assert obj is not None
    assert obj["spec"] == {"model": MODEL, "protocol": "v1", "gpus": 0, "stopped": False}


@pytest.mark.parametrize("sample", SAMPLES, ids=[p.name for p in SAMPLES])
def test_samples_apply(kubectl: Kubectl, namespace: str, sample: Path) -> None:
    kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(sample))


def test_deployment_mode_is_immutable(kubectl: Kubectl, namespace: str) -> None:
    obj = md({"model": MODEL, "deploymentMode": "Standard"}, name="mode")
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj))
    proc = kubectl("patch", "modeldeployment", "mode", "-n", namespace, "--type=merge",
                   "-p", '{"spec": {"deploymentMode": "Knative"}}', check=False)
    assert proc.returncode != 0
    assert "spec.deploymentMode is immutable" in proc.stderr, proc.stderr
    # other fields stay mutable
    kubectl("patch", "modeldeployment", "mode", "-n", namespace, "--type=merge",
            "-p", '{"spec": {"gpus": 1, "stopped": true}}')
