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
    ("bad-format", md({"model": {**MODEL, "format": "pmml"}}), "spec.model.format"),
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
    ("negative-cpu-number", md({"model": MODEL, "resources": {"cpu": -1}}),
     "spec.resources.cpu"),
    ("fractional-cpu-number", md({"model": MODEL, "resources": {"cpu": 0.5}}),
     "spec.resources.cpu"),
    ("bad-request-memory", md({"model": MODEL, "resources": {"requests": {"memory": "lots"}}}),
     "spec.resources.requests.memory"),
    ("request-over-limit", md({"model": MODEL, "resources": {
        "requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}}),
     "spec.resources.requests.cpu must be less than or equal to the cpu limit"),
    ("numeric-request-over-limit", md({"model": MODEL, "resources": {
        "requests": {"cpu": 3}, "limits": {"cpu": "2500m"}}}),
     "spec.resources.requests.cpu must be less than or equal to the cpu limit"),
    ("request-over-both", md({"model": MODEL, "resources": {
        "memory": "1Gi", "requests": {"memory": 2147483648}}}),
     "spec.resources.requests.memory must be less than or equal to the memory limit"),
    ("limit-under-both", md({"model": MODEL, "resources": {
        "memory": "2Gi", "limits": {"memory": "1Gi"}}}),
     "spec.resources.limits.memory must be greater than or equal to spec.resources.memory"),
    ("knative-metric-in-standard", md({"model": MODEL, "deploymentMode": "Standard",
                                       "autoscaling": {"metric": "concurrency", "target": 4}}),
     "spec.autoscaling.metric concurrency and rps need deploymentMode Knative"),
    ("rps-in-standard", md({"model": MODEL, "deploymentMode": "Standard",
                            "autoscaling": {"metric": "rps", "target": 4}}),
     "spec.autoscaling.metric"),
    ("bad-service-account", md({"model": MODEL, "serviceAccountName": "S3_Reader"}),
     "spec.serviceAccountName"),
    ("zero-timeout", md({"model": MODEL, "timeout": 0}), "spec.timeout"),
    ("huge-concurrency", md({"model": MODEL, "containerConcurrency": 1001}),
     "spec.containerConcurrency"),
    ("negative-concurrency", md({"model": MODEL, "containerConcurrency": -1}),
     "spec.containerConcurrency"),
    ("bad-logger-mode", md({"model": MODEL, "logger": {"url": "http://l", "mode": "both"}}),
     "spec.logger.mode"),
    ("bad-logger-url", md({"model": MODEL, "logger": {"url": "kafka://broker/topic"}}),
     "spec.logger.url"),
    ("toleration-exists-with-value", md({"model": MODEL, "tolerations": [
        {"key": "k", "operator": "Exists", "value": "v"}]}),
     "spec.tolerations[0].value"),
    ("toleration-no-key", md({"model": MODEL, "tolerations": [{"operator": "Equal",
                                                               "value": "v"}]}),
     "spec.tolerations[0].operator"),
    ("toleration-seconds-noschedule", md({"model": MODEL, "tolerations": [
        {"key": "k", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 5}]}),
     "spec.tolerations[0].tolerationSeconds"),
    ("toleration-bad-effect", md({"model": MODEL, "tolerations": [
        {"key": "k", "effect": "Never"}]}), "spec.tolerations[0].effect"),
    ("env-model-version", md({"model": MODEL, "env": [{"name": "MODEL_VERSION",
                                                       "value": "x"}]}),
     "spec.env must not set MODEL_VERSION"),
    ("env-duplicate", md({"model": MODEL, "env": [{"name": "A", "value": "1"},
                                                  {"name": "A", "value": "2"}]}),
     "spec.env[1]"),
    ("env-value-and-value-from", md({"model": MODEL, "env": [
        {"name": "A", "value": "1",
         "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
     "spec.env[0].valueFrom"),
    ("env-no-name", md({"model": MODEL, "env": [{"value": "1"}]}), "spec.env[0].name"),
    ("label-slipway-key", md({"model": MODEL, "labels": {"slipway.dev/model-version": "x"}}),
     "spec.labels keys"),
    ("label-managed-by", md({"model": MODEL, "labels": {"app.kubernetes.io/managed-by": "me"}}),
     "spec.labels keys"),
    ("label-bad-key", md({"model": MODEL, "labels": {"bad key": "x"}}), "spec.labels"),
    ("label-bad-value", md({"model": MODEL, "labels": {"team": "a b"}}), "spec.labels.team"),
    ("annotation-slipway-key", md({"model": MODEL, "annotations": {"slipway.dev/x": "v"}}),
     "spec.annotations keys"),
    ("annotation-storage-uri", md({"model": MODEL, "annotations": {
        "serving.kserve.io/storage-initializer-sourceuri": "s3://other"}}),
     "spec.annotations keys"),
    ("node-selector-bad-key", md({"model": MODEL, "nodeSelector": {"-pool": "a"}}),
     "spec.nodeSelector keys"),
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


@pytest.mark.parametrize("uri", ["http://models.example.com/iris/model.joblib",
                                 "https://models.example.com/iris/model.joblib",
                                 "hf://org/iris", "pvc://models/iris", "gs://b/iris"])
def test_kserve_storage_schemes_accepted(kubectl: Kubectl, namespace: str, uri: str) -> None:
    obj = md({"model": {**MODEL, "uri": uri}}, name="scheme")
    kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
            input=yaml.safe_dump(obj))


def test_onnx_format_accepted(kubectl: Kubectl, namespace: str) -> None:
    obj = md({"model": {**MODEL, "format": "onnx"}}, name="onnx")
    kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
            input=yaml.safe_dump(obj))


def test_numeric_quantities_accepted_for_both_kinds(kubectl: Kubectl, namespace: str) -> None:
    """cpu: 4 and memory: 1073741824 as Kubernetes accepts them (int-or-string), and the CEL
    request <= limit check compares numbers and strings as quantities."""
    resources = {"cpu": 4, "memory": 1073741824,
                 "requests": {"cpu": "500m", "memory": "1Gi"},
                 "limits": {"memory": 2147483648}}
    kubectl("create", "-n", namespace, "-f", "-",
            input=yaml.safe_dump(md({"model": MODEL, "resources": resources}, name="nums")))
    stored = kubectl.get("modeldeployment", "nums", namespace)
    assert stored is not None and stored["spec"]["resources"] == resources
    # equal amounts written differently are fine
    kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=yaml.safe_dump(
        md({"model": MODEL, "resources": {"requests": {"cpu": "1000m", "memory": "1024Mi"},
                                          "limits": {"cpu": 1, "memory": "1Gi"}}},
           name="equal")))
    tj = {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
          "metadata": {"name": "nums"},
          "spec": {"image": "example/train:1", "resources": {"cpu": 4, "memory": 1073741824}}}
    kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(tj))
    stored_tj = kubectl.get("trainingjob", "nums", namespace)
    assert stored_tj is not None
    assert stored_tj["spec"]["resources"] == {"cpu": 4, "memory": 1073741824}
    bad_tj = {**tj, "metadata": {"name": "bad"},
              "spec": {"image": "example/train:1", "resources": {"memory": "lots"}}}
    proc = kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(bad_tj),
                   check=False)
    assert proc.returncode != 0 and "spec.resources.memory" in proc.stderr, proc.stderr


def test_knative_metric_without_mode_is_left_to_the_operator(kubectl: Kubectl,
                                                              namespace: str) -> None:
    """Without spec.deploymentMode the mode is the operator's default, unknown to the CRD: the
    apiserver accepts it (the operator reports SpecSupported=False in Standard mode)."""
    for name, extra in (("nomode", {}), ("knative", {"deploymentMode": "Knative"})):
        obj = md({"model": MODEL, "autoscaling": {"metric": "rps", "target": 20}, **extra},
                 name=name)
        kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-",
                input=yaml.safe_dump(obj))


def test_unknown_affinity_field_is_refused(kubectl: Kubectl, namespace: str) -> None:
    obj = md({"model": MODEL, "affinity": {"nodeAfinity": {}}}, name="typo")
    proc = kubectl("create", "-n", namespace, "-f", "-", input=yaml.safe_dump(obj),
                   check=False)
    assert proc.returncode != 0
    assert "spec.affinity.nodeAfinity" in proc.stderr, proc.stderr
