"""The TrainingJob builders: spec in, Job/Service manifests out."""

from __future__ import annotations

from typing import Any

import pytest

from slipway.api.trainingjob import TrainingJobSpec
from slipway.builders.trainingjob import (
    ATTEMPT_LABEL,
    QUEUE_LABEL,
    BuildError,
    build_job,
    build_service,
    job_attempt,
    job_output,
    resolve_output,
    spec_hash,
)

TJ = {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
      "metadata": {"name": "bert", "namespace": "ml", "uid": "u-1", "generation": 3}}


def spec(**kw: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"image": "trainer:1", **kw})


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_single_gpu_job_requests_gpu_tolerates_taint_and_selects_product() -> None:
    s = spec(gpusPerWorker=1, gpuType="NVIDIA-H100-80GB-HBM3",
             resources={"cpu": "4", "memory": "16Gi"})
    job = build_job(s, TJ, suspend=False)
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"] == {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} \
        in pod["tolerations"]
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 1
    assert "completionMode" not in job["spec"]
    assert build_service(s, TJ) is None
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "u-1" and owner["controller"] is True
    assert job["metadata"]["labels"]["slipway.dev/trainingjob"] == "bert"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_cpu_job_has_no_gpu_toleration() -> None:
    pod = build_job(spec(), TJ, suspend=False)["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_torchrun_indexed_job_env_and_headless_service() -> None:
    s = spec(workers=2, gpusPerWorker=8, distributed={"backend": "torchrun"})
    job = build_job(s, TJ, suspend=False)
    name = job["metadata"]["name"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == 2
    env = env_of(job)
    assert env["MASTER_ADDR"] == f"{name}-0.bert.ml.svc" == env["PET_MASTER_ADDR"]
    assert env["MASTER_PORT"] == "29500" == env["PET_MASTER_PORT"]
    assert env["WORLD_SIZE"] == "16"
    assert env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "8"
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    for var in ("NODE_RANK", "PET_NODE_RANK"):
        assert env[var]["fieldRef"]["fieldPath"] == index
    # torchrun sets RANK for each process it starts; a pod-wide RANK would be the node index.
    assert "RANK" not in env
    assert env["PET_RDZV_BACKEND"] == "c10d"
    assert env["PET_RDZV_ENDPOINT"] == f"{name}-0.bert.ml.svc:29500"
    assert env["PET_RDZV_ID"] == "u-1-0" and env["PET_MAX_RESTARTS"] == "0"
    assert job["spec"]["template"]["spec"]["subdomain"] == "bert"
    svc = build_service(s, TJ)
    assert svc is not None
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["name"] == "bert"
    assert svc["spec"]["selector"] == {"app.kubernetes.io/managed-by": "slipway",
                                       "slipway.dev/trainingjob": "bert"}


def test_nproc_per_node_override_and_user_env_wins() -> None:
    s = spec(workers=2, gpusPerWorker=8, distributed={"nprocPerNode": 4},
             env=[{"name": "MASTER_PORT", "value": "1234"}, {"name": "LR", "value": "0.1"}])
    env = env_of(build_job(s, TJ, suspend=False))
    assert env["PET_NPROC_PER_NODE"] == "4" and env["WORLD_SIZE"] == "8"
    assert env["MASTER_PORT"] == "1234" and env["LR"] == "0.1"


def test_run_policy_queue_and_checkpoint() -> None:
    s = spec(queue="team-a", runPolicy={"backoffLimit": 2, "activeDeadlineSeconds": 600},
             checkpoint={"claimName": "ckpt"})
    job = build_job(s, TJ, suspend=True)
    # Retries are group restarts made by the operator: the Job itself never retries a pod.
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] == 600
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "checkpoint",
                               "persistentVolumeClaim": {"claimName": "ckpt"}}]
    assert pod["containers"][0]["volumeMounts"][0]["mountPath"] == "/checkpoints"
    assert env_of(job)["CHECKPOINT_DIR"] == "/checkpoints"


def test_pod_template_merges_by_name_deterministically() -> None:
    s = spec(podTemplate={
        "metadata": {"annotations": {"a": "1"}, "labels": {"team": "x"}},
        "spec": {"containers": [{"name": "trainer", "env": [{"name": "X", "value": "1"}]},
                                {"name": "sidecar", "image": "log:1"}],
                 "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}]}})
    t1 = build_job(s, TJ, suspend=False)["spec"]["template"]
    t2 = build_job(s, TJ, suspend=False)["spec"]["template"]
    assert t1 == t2
    names = [c["name"] for c in t1["spec"]["containers"]]
    assert names == ["trainer", "sidecar"]
    assert t1["spec"]["containers"][0]["image"] == "trainer:1"
    assert {"name": "X", "value": "1"} in t1["spec"]["containers"][0]["env"]
    assert t1["metadata"]["annotations"] == {"a": "1"}
    assert t1["metadata"]["labels"]["team"] == "x"


def test_pod_template_cannot_drop_trainer() -> None:
    s = spec(podTemplate={"spec": {"containers": [{"name": "other", "image": "x"}]}})
    t = build_job(s, TJ, suspend=False)["spec"]["template"]["spec"]
    assert [c["name"] for c in t["containers"]] == ["trainer", "other"]  # merged, kept
    bad = spec(podTemplate={"spec": {"containers": "oops"}})
    with pytest.raises(BuildError):
        build_job(bad, TJ, suspend=False)


def test_job_name_tracks_template_but_not_suspend() -> None:
    a = spec(gpusPerWorker=1)
    assert build_job(a, TJ, suspend=True)["metadata"]["name"] == \
        build_job(a, TJ, suspend=False)["metadata"]["name"]
    b = spec(gpusPerWorker=2)
    assert spec_hash(a, TJ) != spec_hash(b, TJ)
    assert build_job(a, TJ, suspend=False)["metadata"]["name"].startswith("bert-")


def test_output_resolution() -> None:
    s = spec(output={"uri": "s3://models/{namespace}/{name}/{version}", "format": "sklearn"})
    assert resolve_output(s, TJ) == {"uri": "s3://models/ml/bert/v3", "version": "v3",
                                     "format": "sklearn"}
    s2 = spec(output={"uri": "pvc://m/{name}", "version": "2024-01"})
    assert resolve_output(s2, TJ) == {"uri": "pvc://m/bert", "version": "2024-01"}
    assert resolve_output(spec(), TJ) is None


def test_output_is_given_to_the_trainer_and_recorded_on_the_job() -> None:
    s = spec(output={"uri": "s3://models/{name}/{version}", "format": "xgboost"})
    job = build_job(s, TJ, suspend=False)
    env = env_of(job)
    assert (env["SLIPWAY_OUTPUT_URI"], env["SLIPWAY_OUTPUT_VERSION"],
            env["SLIPWAY_OUTPUT_FORMAT"]) == ("s3://models/bert/v3", "v3", "xgboost")
    assert job_output(job) == {"uri": "s3://models/bert/v3", "version": "v3",
                               "format": "xgboost"}
    # A later generation (say, suspend then resume) keeps the same Job, so the version the
    # trainer was told stays the one recorded, even though a new Job would get v5.
    later = {**TJ, "metadata": {**TJ["metadata"], "generation": 5}}
    assert build_job(s, later, suspend=False)["metadata"]["name"] == job["metadata"]["name"]
    assert resolve_output(s, later) == {"uri": "s3://models/bert/v5", "version": "v5",
                                        "format": "xgboost"}
    assert job_output(job) != resolve_output(s, later)


def test_user_env_wins_over_output_env() -> None:
    s = spec(output={"uri": "s3://m/{name}"}, env=[{"name": "SLIPWAY_OUTPUT_URI",
                                                    "value": "file:///tmp/x"}])
    env = env_of(build_job(s, TJ, suspend=False))
    assert env["SLIPWAY_OUTPUT_URI"] == "file:///tmp/x"
    assert env["SLIPWAY_OUTPUT_VERSION"] == "v3"
    assert job_output({"metadata": {}}) is None
    assert job_output({"metadata": {"annotations": {"slipway.dev/output": "not json"}}}) is None


def test_any_trainer_failure_fails_the_attempt_but_disruptions_do_not() -> None:
    job = build_job(spec(workers=2, distributed={}), TJ, suspend=False)
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
    assert rules[1] == {"action": "FailJob", "onExitCodes": {
        "containerName": "trainer", "operator": "NotIn", "values": [0]}}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it


def test_attempts_get_their_own_job_with_the_same_template_hash() -> None:
    s = spec(workers=2, gpusPerWorker=8, distributed={})
    first = build_job(s, TJ, suspend=False)
    second = build_job(s, TJ, suspend=False, attempt=2)
    name = first["metadata"]["name"]
    assert second["metadata"]["name"] == f"{name}-a2"
    assert name == f"bert-{spec_hash(s, TJ)[:5]}"  # attempt 0: the name Jobs always had
    assert first["metadata"]["annotations"] == second["metadata"]["annotations"]
    assert (job_attempt(first), job_attempt(second)) == (0, 2)
    assert second["spec"]["template"]["metadata"]["labels"][ATTEMPT_LABEL] == "2"
    env = env_of(second)
    assert env["PET_RDZV_ID"] == "u-1-2"
    assert env["MASTER_ADDR"] == f"{name}-a2-0.bert.ml.svc"
    assert env["PET_RDZV_ENDPOINT"] == f"{name}-a2-0.bert.ml.svc:29500"
    assert job_attempt({"metadata": {}}) == 0  # a Job made before attempts were recorded


def test_user_env_wins_over_the_rendezvous_id() -> None:
    s = spec(workers=2, distributed={}, env=[{"name": "PET_RDZV_ID", "value": "mine"}])
    assert env_of(build_job(s, TJ, suspend=False, attempt=1))["PET_RDZV_ID"] == "mine"
