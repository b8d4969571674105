"""TrainingJob end to end on the real control plane; kwok plays the kubelets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

import slipway.kube
from slipway.controllers.trainingjob import reconcile
from slipway.devcluster import Cluster
from tests.helpers import Kubectl, OperatorProcess, wait_for

FAST = "2s"  # how long kwok keeps a Job pod Running (slipway.dev/fake-duration)


def tj(name: str, pod_annotations: dict[str, str] | None = None, **spec: Any) -> str:
    spec.setdefault("podTemplate", {"metadata": {"annotations": {
        "slipway.dev/fake-duration": FAST, **(pod_annotations or {})}}})
    return yaml.safe_dump({"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
                           "metadata": {"name": name}, "spec": {"image": "trainer:1", **spec}})


def status(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return dict((kubectl.get("trainingjob", name, ns) or {}).get("status") or {})


def wait_phase(kubectl: Kubectl, name: str, ns: str, phase: str,
               timeout: float = 90) -> dict[str, Any]:
    def reached() -> dict[str, Any]:
        s = status(kubectl, name, ns)
        assert s.get("phase") == phase, f"phase is {s.get('phase')}: {s}"  # shown on timeout
        return s

    return wait_for(reached, timeout, what=f"{name} phase {phase}")


def events(kubectl: Kubectl, name: str, ns: str) -> list[tuple[str, str, str]]:
    items = kubectl.items("events", ns, None)
    return [(e["type"], e["reason"], e.get("message", "")) for e in items
            if e["involvedObject"].get("name") == name
            and e["involvedObject"].get("kind") == "TrainingJob"]


def wait_event(kubectl: Kubectl, name: str, ns: str, reason: str,
               type_: str = "Normal") -> list[tuple[str, str, str]]:
    def seen() -> list[tuple[str, str, str]] | None:
        evs = events(kubectl, name, ns)
        return evs if any(t == type_ and r == reason for t, r, _ in evs) else None

    return wait_for(seen, 30, what=f"a {type_} {reason} event on {name}")


def test_single_gpu_job_succeeds_with_output(kubectl: Kubectl, namespace: str,
                                             operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "one", gpusPerWorker=1, gpuType="NVIDIA-H100-80GB-HBM3",
        output={"uri": "s3://models/{name}/{version}", "format": "sklearn"}))
    st = wait_phase(kubectl, "one", namespace, "Succeeded")
    assert st["output"] == {"uri": "s3://models/one/v1", "version": "v1", "format": "sklearn"}
    assert st["gpus"] == 1 and st["workers"]["succeeded"] == 1
    assert st["jobName"].startswith("one-") and st["duration"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Succeeded"]["status"] == "True" and conds["Created"]["status"] == "True"
    assert conds["Running"]["status"] == "False"
    pod = kubectl.items("pods", namespace, "slipway.dev/trainingjob=one")[0]
    assert pod["spec"]["nodeName"].startswith("kwok-gpu-")
    assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    reasons = {r for _, r, _ in wait_event(kubectl, "one", namespace, "Succeeded")}
    assert "Created" in reasons
    out = kubectl("get", "tj", "-n", namespace).stdout
    assert "PHASE" in out and "GPUS" in out and "Succeeded" in out


def test_torchrun_two_by_eight(kubectl: Kubectl, namespace: str,
                               operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "ddp", workers=2, gpusPerWorker=8, distributed={"backend": "torchrun"},
        pod_annotations={"slipway.dev/fake-duration": "6s"}))
    st = wait_phase(kubectl, "ddp", namespace, "Running")
    job = st["jobName"]
    pods = wait_for(lambda: len(p := kubectl.items(
        "pods", namespace, "slipway.dev/trainingjob=ddp")) == 2 and p, 30, what="2 pods")
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(nodes) == 2 and all(n.startswith("kwok-gpu-") for n in nodes)  # 8 GPUs each
    for pod in pods:
        env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
        assert env["MASTER_ADDR"]["value"] == f"{job}-0.ddp.{namespace}.svc"
        assert env["WORLD_SIZE"]["value"] == "16" and env["PET_NNODES"]["value"] == "2"
        assert env["PET_NPROC_PER_NODE"]["value"] == "8"
        assert env["MASTER_PORT"]["value"] == env["PET_MASTER_PORT"]["value"] == "29500"
        assert "job-completion-index" in env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert "RANK" not in env  # torchrun sets it for each process
        assert env["PET_RDZV_ENDPOINT"]["value"] == f"{job}-0.ddp.{namespace}.svc:29500"
        assert pod["spec"]["hostname"] == \
            f"{job}-{pod['metadata']['annotations']['batch.kubernetes.io/job-completion-index']}"
        assert pod["spec"]["subdomain"] == "ddp"
    svc = kubectl.get("service", "ddp", namespace)
    assert svc and svc["spec"]["clusterIP"] == "None"
    wait_phase(kubectl, "ddp", namespace, "Succeeded")


def test_permanent_exit_code_fails_at_once(kubectl: Kubectl, namespace: str,
                                           operator: OperatorProcess) -> None:
    """restartPolicy ExitCode (the default): exit codes 1-127 are the program's own verdict,
    so the job fails at once, with the code in the message, and is not retried."""
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "flaky", runPolicy={"backoffLimit": 2},
        pod_annotations={"slipway.dev/fake-exit": "1", "slipway.dev/fake-duration": "1s"}))
    st = wait_phase(kubectl, "flaky", namespace, "Failed", timeout=60)
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "ExitCode", failed
    assert "exit code 1" in st["message"], st["message"]
    assert st["restarts"] == 0 and st.get("attempt", 0) == 0
    assert len(kubectl.items("jobs", namespace, "slipway.dev/trainingjob=flaky")) == 1
    wait_event(kubectl, "flaky", namespace, "ExitCode", "Warning")


def test_deadline_exceeded(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "slow", runPolicy={"activeDeadlineSeconds": 3},
        pod_annotations={"slipway.dev/fake-duration": "300s"}))
    st = wait_phase(kubectl, "slow", namespace, "Failed", timeout=60)
    assert next(c for c in st["conditions"] if c["type"] == "Failed")["reason"] == \
        "DeadlineExceeded"


def test_suspend_and_resume(kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "pausy", pod_annotations={"slipway.dev/fake-duration": "8s"}))
    wait_phase(kubectl, "pausy", namespace, "Running")
    kubectl("patch", "tj", "pausy", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    st = wait_phase(kubectl, "pausy", namespace, "Queued")
    assert next(c for c in st["conditions"] if c["type"] == "Suspended")["status"] == "True"
    wait_for(lambda: not kubectl.items("pods", namespace, "slipway.dev/trainingjob=pausy"), 60,
             what="pods of the suspended job to go away")
    kubectl("patch", "tj", "pausy", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    wait_phase(kubectl, "pausy", namespace, "Running")
    wait_phase(kubectl, "pausy", namespace, "Succeeded")


def test_edit_then_suspend_suspends_and_resume_applies_the_edit(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess) -> None:
    """Sequence: a template edit while Running (kept until suspend/resume), then suspend.
    The suspend must take effect at once, and the resume must run the edited template."""
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "edit", pod_annotations={"slipway.dev/fake-duration": "300s"}))
    first = wait_phase(kubectl, "edit", namespace, "Running")["jobName"]
    kubectl("patch", "tj", "edit", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"env":[{"name":"LR","value":"0.1"}]}}')
    wait_for(lambda: "suspend and resume" in (kubectl.get("tj", "edit", namespace) or {})
             .get("status", {}).get("message", ""), 30, what="the pending-change note")
    kubectl("patch", "tj", "edit", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    st = wait_phase(kubectl, "edit", namespace, "Queued")
    wait_for(lambda: not kubectl.items("pods", namespace, "slipway.dev/trainingjob=edit"), 60,
             what="the pods of the suspended job to go away")
    jobs = kubectl.items("jobs", namespace, "slipway.dev/trainingjob=edit")
    assert all(j["spec"]["suspend"] for j in jobs), jobs
    kubectl("patch", "tj", "edit", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
    st = wait_phase(kubectl, "edit", namespace, "Running")
    assert st["jobName"] != first  # the edited template runs in a Job of its own
    job = kubectl.get("job", st["jobName"], namespace) or {}
    env = {e["name"]: e.get("value") for e in
           job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LR"] == "0.1"


def test_queue_label_and_kueue_owns_suspend(kubectl: Kubectl, namespace: str,
                                            operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj("queued", queue="team-a"))
    st = wait_phase(kubectl, "queued", namespace, "Queued")
    job = kubectl.get("job", st["jobName"], namespace) or {}
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert next(c for c in st["conditions"] if c["type"] == "Suspended")["reason"] == \
        "WaitingForAdmission"
    assert not kubectl.items("pods", namespace, "slipway.dev/trainingjob=queued")
    # Stand in for Kueue admitting the workload: it unsuspends the Job.
    kubectl("patch", "job", st["jobName"], "-n", namespace, "--type=merge",
            "-p", '{"spec":{"suspend":false}}')
    wait_phase(kubectl, "queued", namespace, "Succeeded")
    job = kubectl.get("job", st["jobName"], namespace) or {}
    assert job["spec"]["suspend"] is False  # Slipway never re-suspended it


def test_delete_garbage_collects_children(kubectl: Kubectl, namespace: str,
                                          operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "gc", workers=2, distributed={}, pod_annotations={"slipway.dev/fake-duration": "300s"}))
    wait_phase(kubectl, "gc", namespace, "Running")
    assert kubectl.get("service", "gc", namespace)
    kubectl("delete", "tj", "gc", "-n", namespace, "--wait=false")
    sel = "slipway.dev/trainingjob=gc"
    wait_for(lambda: not kubectl.items("jobs", namespace, sel) and
             not kubectl.items("pods", namespace, sel) and
             kubectl.get("service", "gc", namespace) is None, 90, what="children to be GC'd")


def test_deleted_job_comes_back(kubectl: Kubectl, namespace: str,
                                operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "heal", pod_annotations={"slipway.dev/fake-duration": "300s"}))
    st = wait_phase(kubectl, "heal", namespace, "Running")
    old_uid = (kubectl.get("job", st["jobName"], namespace) or {})["metadata"]["uid"]
    kubectl("delete", "job", st["jobName"], "-n", namespace, "--wait=true")
    wait_for(lambda: (kubectl.get("job", st["jobName"], namespace) or {}).get(
        "metadata", {}).get("uid") not in (None, old_uid), 60, what="the Job to be recreated")


def test_operator_restart_mid_run_no_duplicates(kubectl: Kubectl, namespace: str,
                                                operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "resume", workers=2, distributed={}, pod_annotations={"slipway.dev/fake-duration": "8s"}))
    st = wait_phase(kubectl, "resume", namespace, "Running")
    uid = (kubectl.get("job", st["jobName"], namespace) or {})["metadata"]["uid"]
    operator.stop()
    operator.start()
    st2 = wait_phase(kubectl, "resume", namespace, "Succeeded")
    jobs = kubectl.items("jobs", namespace, "slipway.dev/trainingjob=resume")
    assert [j["metadata"]["uid"] for j in jobs] == [uid]
    assert len(kubectl.items("services", namespace, "slipway.dev/trainingjob=resume")) == 1
    assert st2["startTime"] == st["startTime"]


def test_ttl_deletes_finished_job(kubectl: Kubectl, namespace: str,
                                  operator: OperatorProcess) -> None:
    # The TTL must outlast a poll or two, or the job could pass through Succeeded and
    # be deleted between two looks at it.
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "ttl", runPolicy={"ttlSecondsAfterFinished": 5}))
    wait_phase(kubectl, "ttl", namespace, "Succeeded")
    wait_for(lambda: kubectl.get("tj", "ttl", namespace) is None, 60,
             what="the TrainingJob to be deleted by its TTL")
    wait_event(kubectl, "ttl", namespace, "TTLExpired")
    wait_for(lambda: not kubectl.items("jobs", namespace, "slipway.dev/trainingjob=ttl"), 60,
             what="its Job to be garbage-collected")


def test_unbuildable_spec_fails_cleanly(kubectl: Kubectl, namespace: str,
                                        operator: OperatorProcess) -> None:
    # Passes the CRD schema (the PodSpec fields it does not check are kept as written) but
    # the Job API rejects it.
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "broken", podTemplate={"spec": {"dnsPolicy": "Bogus"}}))
    st = wait_phase(kubectl, "broken", namespace, "Failed", timeout=60)
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BuildFailed" and "dnsPolicy" in failed["message"]
    wait_event(kubectl, "broken", namespace, "BuildFailed", "Warning")
    # Fixing the spec recovers it.
    kubectl("patch", "tj", "broken", "-n", namespace, "--type=json", "-p", json.dumps(
        [{"op": "remove", "path": "/spec/podTemplate/spec"}]))
    wait_phase(kubectl, "broken", namespace, "Succeeded")
    assert operator.proc is not None and operator.proc.poll() is None


@pytest.fixture
def in_process_client(cluster: Cluster) -> Iterator[None]:
    """Point slipway.kube, in this test process, at the test cluster."""
    slipway.kube.connect(str(cluster.kubeconfig))
    yield
    slipway.kube._connection = None


def stays(fn: Callable[[], Any], seconds: float, what: str) -> None:
    """Check *fn* (asserts) again and again for *seconds*: a state that must hold, not come."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fn()
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from exc
        if time.monotonic() >= deadline:
            return
        time.sleep(0.5)


def _jobs(kubectl: Kubectl, name: str, ns: str) -> list[dict[str, Any]]:
    return kubectl.items("jobs", ns, f"slipway.dev/trainingjob={name}")


def _image(job: dict[str, Any]) -> str:
    return str(job["spec"]["template"]["spec"]["containers"][0]["image"])


def test_stale_snapshot_cannot_undo_a_suspend(kubectl: Kubectl, namespace: str,
                                              operator: OperatorProcess,
                                              in_process_client: None) -> None:
    """The resync loop and Job events hand reconcile() a LIST snapshot that may predate the
    user's last edit; reconciling from it must not resume the job or bring back the old
    image (reconcile re-reads the object under its lock)."""
    kubectl("apply", "-n", namespace, "-f", "-", input=tj(
        "stale", pod_annotations={"slipway.dev/fake-duration": "300s"}))
    wait_phase(kubectl, "stale", namespace, "Running")
    snapshot = kubectl.get("tj", "stale", namespace)
    assert snapshot is not None
    kubectl("patch", "tj", "stale", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
    wait_phase(kubectl, "stale", namespace, "Queued")
    kubectl("patch", "tj", "stale", "-n", namespace, "--type=merge",
            "-p", '{"spec":{"image":"trainer:2"}}')  # allowed while suspended

    def settled() -> list[dict[str, Any]]:
        jobs = _jobs(kubectl, "stale", namespace)
        assert [(_image(j), j["spec"]["suspend"]) for j in jobs] == [("trainer:2", True)], jobs
        return jobs

    before = wait_for(settled, 60, what="one suspended Job with the new image")

    asyncio.run(reconcile(snapshot))  # as the resync loop would, with the old copy

    jobs = _jobs(kubectl, "stale", namespace)
    assert not [j for j in jobs if not j["spec"]["suspend"]], "a stale reconcile resumed it"
    assert {_image(j) for j in jobs} == {"trainer:2"}, [_image(j) for j in jobs]
    assert [j["metadata"]["uid"] for j in jobs] == [before[0]["metadata"]["uid"]]


def test_reapplied_name_does_not_adopt_an_orphaned_job(kubectl: Kubectl, namespace: str,
                                                       operator: OperatorProcess) -> None:
    """A TrainingJob deleted with --cascade=orphan leaves its Job (labels kept, owner
    stripped). A new TrainingJob of the same name must neither adopt it (and report its old
    result) nor delete it: it waits for the name, then runs a Job of its own."""
    manifest = tj("again", workers=2, distributed={})
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
    old = wait_phase(kubectl, "again", namespace, "Succeeded")
    old_job = kubectl.get("job", old["jobName"], namespace) or {}
    kubectl("delete", "tj", "again", "-n", namespace, "--cascade=orphan", "--wait=true")
    wait_for(lambda: not (kubectl.get("job", old["jobName"], namespace) or {}).get(
        "metadata", {}).get("ownerReferences"), 30, what="the orphaned Job to lose its owner")

    kubectl("apply", "-n", namespace, "-f", "-", input=manifest)

    def waiting() -> dict[str, Any]:
        st = status(kubectl, "again", namespace)
        assert st.get("phase") == "Pending" and old["jobName"] in st.get("message", ""), st
        return st

    st = wait_for(waiting, 30, what="the name conflict to be reported")
    running = next(c for c in st["conditions"] if c["type"] == "Running")
    assert running["reason"] == "NameConflict", running
    # Over more than one resync: still waiting, the orphan neither adopted nor deleted.
    stays(waiting, 4, "the job to keep waiting")
    kept = kubectl.get("job", old["jobName"], namespace) or {}
    assert kept["metadata"]["uid"] == old_job["metadata"]["uid"]
    assert [r for _, r, _ in events(kubectl, "again", namespace)].count("NameConflict") == 1

    kubectl("delete", "job", old["jobName"], "-n", namespace, "--wait=true")
    new = wait_phase(kubectl, "again", namespace, "Succeeded")
    tj_uid = (kubectl.get("tj", "again", namespace) or {})["metadata"]["uid"]
    job = kubectl.get("job", new["jobName"], namespace) or {}
    assert job["metadata"]["uid"] != old_job["metadata"]["uid"]
    assert [r["uid"] for r in job["metadata"]["ownerReferences"]] == [tj_uid]
    svc = kubectl.get("service", "again", namespace) or {}
    assert [r["uid"] for r in svc["metadata"]["ownerReferences"]] == [tj_uid]


def test_someone_elses_service_is_never_taken_over(kubectl: Kubectl, namespace: str,
                                                   operator: OperatorProcess) -> None:
    """A Service with the job's name that is not ours (no label, so the operator's watch
    never shows it) blocks the job with NameConflict, and no Job is made; once it is gone,
    the job makes its own Service and runs."""
    kubectl("create", "service", "clusterip", "mine", "--clusterip=None", "--tcp=80:80",
            "-n", namespace)
    theirs = kubectl.get("service", "mine", namespace) or {}
    kubectl("apply", "-n", namespace, "-f", "-", input=tj("mine", workers=2, distributed={}))

    def blocked() -> dict[str, Any]:
        st = status(kubectl, "mine", namespace)
        running = next((c for c in st.get("conditions") or [] if c["type"] == "Running"), {})
        assert running.get("reason") == "NameConflict" and "Service mine" in st["message"], st
        return st

    wait_for(blocked, 30, what="the Service name conflict to be reported")
    stays(blocked, 4, "the job to keep waiting")
    assert _jobs(kubectl, "mine", namespace) == []
    kept = kubectl.get("service", "mine", namespace) or {}
    assert kept["metadata"]["uid"] == theirs["metadata"]["uid"]
    assert not kept["metadata"].get("ownerReferences")

    kubectl("delete", "service", "mine", "-n", namespace, "--wait=true")
    wait_phase(kubectl, "mine", namespace, "Succeeded")
    tj_uid = (kubectl.get("tj", "mine", namespace) or {})["metadata"]["uid"]
    svc = kubectl.get("service", "mine", namespace) or {}
    assert [r["uid"] for r in svc["metadata"]["ownerReferences"]] == [tj_uid]


def test_unschedulable_worker_is_pending_not_running(kubectl: Kubectl, namespace: str,
                                                     operator: OperatorProcess) -> None:
    """Job.status.active counts Pending pods too: a worker the scheduler cannot place must
    leave the job Pending, with the scheduler's reason and message."""
    kubectl("apply", "-n", namespace, "-f", "-", input=tj("huge", gpusPerWorker=9))

    def unschedulable() -> dict[str, Any]:
        st = status(kubectl, "huge", namespace)
        running = next((c for c in st.get("conditions") or [] if c["type"] == "Running"), {})
        assert st.get("phase") == "Pending" and running.get("reason") == "Unschedulable", st
        return st

    st = wait_for(unschedulable, 60, what="Pending/Unschedulable")
    assert "Insufficient nvidia.com/gpu" in st["message"], st["message"]
    stays(unschedulable, 4, "a resync or two later it still says so")
