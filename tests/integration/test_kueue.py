"""TrainingJobs queued by a real Kueue (v0.14.0, built from its Go module and started once per
session by the `kueue` fixture) with the session's operator; kwok plays the kubelets.

Each test gets its own ClusterQueue (nvidia.com/gpu quota, cpu and memory covered too) with a
LocalQueue `team` in its namespace. What is checked: jobs beyond the quota wait as Queued and
run as capacity frees; preemption, deactivation and a drained LocalQueue put a job back to
Queued, never Failed; and Slipway does not fight Kueue over Job.spec.suspend, which a watch on
the Jobs records: every admission is exactly one true -> false transition, every eviction one
false -> true; runPolicy.suspend on a queued job holds it through its Workload
(spec.active: false) instead of flipping the Job; status.message carries Kueue's reason.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from slipway.devcluster import Cluster
from tests.conftest import KUEUE_NAMESPACE_LABEL
from tests.helpers import Kubectl, OperatorProcess, wait_for

GPU = "nvidia.com/gpu"
QUEUE = "team"
FLAVOR = "slipway-test-flavor"
KUEUE_API = "kueue.x-k8s.io/v1beta1"
LOW, HIGH = "slipway-test-low", "slipway-test-high"


def tj(name: str, gpus: int, duration: str, priority_class: str | None = None,
       **spec: Any) -> dict[str, Any]:
    """A 1-worker TrainingJob in the LocalQueue, that kwok runs for *duration*."""
    template: dict[str, Any] = {"metadata": {"annotations": {
        "slipway.dev/fake-duration": duration}}}
    if priority_class:
        template["spec"] = {"priorityClassName": priority_class}
    return {"apiVersion": "slipway.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": {"image": "trainer:1", "gpusPerWorker": gpus, "queue": QUEUE,
                     "podTemplate": template, **spec}}


def apply(kubectl: Kubectl, ns: str, *objs: dict[str, Any]) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(list(objs)))


def status(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    return dict((kubectl.get("trainingjob", name, ns) or {}).get("status") or {})


def wait_phase(kubectl: Kubectl, name: str, ns: str, phase: str,
               timeout: float = 90) -> dict[str, Any]:
    def reached() -> dict[str, Any]:
        s = status(kubectl, name, ns)
        assert s.get("phase") == phase, f"phase is {s.get('phase')}: {s.get('message')}"
        return s

    return wait_for(reached, timeout, interval=0.3, what=f"{name} phase {phase}")


def stays(fn: Callable[[], Any], seconds: float, what: str) -> None:
    """Check *fn* (asserts) again and again for *seconds*: a state that must hold."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fn()
        except AssertionError as exc:
            raise AssertionError(f"{what}: {exc}") from exc
        if time.monotonic() >= deadline:
            return
        time.sleep(0.3)


def job_of(kubectl: Kubectl, name: str, ns: str) -> dict[str, Any]:
    jobs = kubectl.items("jobs", ns, f"slipway.dev/trainingjob={name}")
    assert len(jobs) == 1, [j["metadata"]["name"] for j in jobs]
    return jobs[0]


def workload_of(kubectl: Kubectl, job: dict[str, Any]) -> dict[str, Any]:
    """The Kueue Workload of *job* (Kueue names it job-<job>-<hash> and owns it by the Job)."""
    meta = job["metadata"]

    def found() -> dict[str, Any] | None:
        for wl in kubectl.items("workloads.kueue.x-k8s.io", meta["namespace"]):
            if any(ref.get("uid") == meta["uid"]
                   for ref in wl["metadata"].get("ownerReferences") or []):
                return wl
        return None

    return wait_for(found, 30, interval=0.3, what=f"the Workload of Job {meta['name']}")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c.get("type") == type_), {})


def set_active(kubectl: Kubectl, wl: dict[str, Any], active: bool) -> None:
    kubectl("patch", "workloads.kueue.x-k8s.io", wl["metadata"]["name"], "-n",
            wl["metadata"]["namespace"], "--type=merge",
            "-p", f'{{"spec":{{"active":{str(active).lower()}}}}}')


class Recorder:
    """Watches the Jobs and TrainingJobs of one namespace from a thread: every Job's
    .spec.suspend values (consecutive repeats folded, so the list is its transitions), how
    many times each Job changed, and each TrainingJob's phases (folded the same way)."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        self.batch = client.BatchV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.ns = namespace
        self.suspend: dict[str, list[bool]] = {}
        self.job_updates: dict[str, int] = {}
        self.phases: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(kind,), daemon=True)
                         for kind in ("jobs", "trainingjobs")]
        self.errors: list[BaseException] = []

    def __enter__(self) -> Recorder:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def _run(self, kind: str) -> None:
        w = watch.Watch()
        rv: str | None = None
        while not self._stop.is_set():
            try:
                if kind == "jobs":
                    stream = w.stream(self.batch.list_namespaced_job, self.ns,
                                      timeout_seconds=1, resource_version=rv)
                else:
                    stream = w.stream(self.custom.list_namespaced_custom_object,
                                      "slipway.dev", "v1alpha1", self.ns, "trainingjobs",
                                      timeout_seconds=1, resource_version=rv)
                for event in stream:
                    self._record(kind, event["object"])
                    rv = w.resource_version
            except ApiException as exc:
                if exc.status == 410:  # expired: list again
                    rv = None
                    continue
                self.errors.append(exc)
                time.sleep(0.2)
            except Exception as exc:  # the test asserts rec.errors is empty
                self.errors.append(exc)
                time.sleep(0.2)

    def _record(self, kind: str, obj: Any) -> None:
        if kind == "jobs":
            name = obj.metadata.name
            self.job_updates[name] = self.job_updates.get(name, 0) + 1
            seen = self.suspend.setdefault(name, [])
            value = bool(obj.spec.suspend)
            if not seen or seen[-1] != value:
                seen.append(value)
        else:
            phase = (obj.get("status") or {}).get("phase")
            seen_p = self.phases.setdefault(obj["metadata"]["name"], [])
            if phase and (not seen_p or seen_p[-1] != phase):
                seen_p.append(phase)

    def transitions(self, job: dict[str, Any]) -> list[bool]:
        return self.suspend.get(job["metadata"]["name"], [])


@pytest.fixture
def api(cluster: Cluster) -> client.ApiClient:
    return config.new_client_from_config(str(cluster.kubeconfig))


@pytest.fixture
def queues(kueue: Cluster, kubectl: Kubectl, namespace: str
           ) -> Iterator[Callable[..., str]]:
    """Makes the test's ClusterQueue (only its namespace may use it) and the LocalQueue
    `team`; returns the ClusterQueue's name."""
    key, value = KUEUE_NAMESPACE_LABEL
    kubectl("label", "namespace", namespace, f"{key}={value}")
    made: list[str] = []

    def make(gpus: int = 8, preemption: dict[str, Any] | None = None) -> str:
        name = f"cq-{namespace}"
        kubectl.apply([
            {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}},
            {"apiVersion": KUEUE_API, "kind": "ClusterQueue", "metadata": {"name": name},
             "spec": {
                 "namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": namespace}},
                 # Kueue admits only what every requested resource is covered for.
                 "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU],
                                     "flavors": [{"name": FLAVOR, "resources": [
                                         {"name": "cpu", "nominalQuota": 64},
                                         {"name": "memory", "nominalQuota": "256Gi"},
                                         {"name": GPU, "nominalQuota": gpus}]}]}],
                 **({"preemption": preemption} if preemption else {}),
             }},
            {"apiVersion": KUEUE_API, "kind": "LocalQueue",
             "metadata": {"name": QUEUE, "namespace": namespace},
             "spec": {"clusterQueue": name}},
        ])
        made.append(name)
        for kind, obj_ns in (("clusterqueue", None), ("localqueue", namespace)):
            obj_name = name if kind == "clusterqueue" else QUEUE
            wait_for(lambda k=kind, n=obj_name, o=obj_ns: condition(  # type: ignore[misc]
                kubectl.get(k, n, o) or {}, "Active").get("status") == "True",
                30, interval=0.3, what=f"{kind} {obj_name} Active")
        return name

    yield make
    for name in made:
        kubectl("delete", "clusterqueue", name, "--wait=false", check=False)


def test_jobs_beyond_quota_wait_then_run_as_capacity_frees(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess,
        queues: Callable[..., str], api: client.ApiClient) -> None:
    queues(gpus=8)
    with Recorder(api, namespace) as rec:
        t0 = time.monotonic()
        apply(kubectl, namespace, tj("a", 4, "6s"), tj("b", 4, "6s"))
        for name in ("a", "b"):
            wait_phase(kubectl, name, namespace, "Running")
        admitted = time.monotonic() - t0
        apply(kubectl, namespace, tj("c", 4, "4s"))
        st = wait_phase(kubectl, "c", namespace, "Queued")
        job_c = job_of(kubectl, "c", namespace)
        assert job_c["spec"]["suspend"] is True
        assert job_c["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
        assert f"queue {QUEUE}" in st["message"]
        # Kueue's own reason lives on the Workload.
        wl = workload_of(kubectl, job_c)

        def pending() -> dict[str, Any]:
            cond = condition(kubectl.get("workloads.kueue.x-k8s.io", wl["metadata"]["name"],
                                         namespace) or {}, "QuotaReserved")
            assert cond.get("status") == "False" and "insufficient unused quota" in \
                cond.get("message", ""), cond
            return cond

        reason = wait_for(pending, 30, interval=0.3, what="c's Workload pending on quota")
        print(f"\nc waits: TrainingJob says {st['message']!r}; Kueue says "
              f"{reason['reason']}: {reason['message']!r}")
        assert not kubectl.items("pods", namespace, "slipway.dev/trainingjob=c")
        # Only once a or b is done (quota 8, 4 + 4 in use) does c run.
        wait_phase(kubectl, "c", namespace, "Running", timeout=60)
        done = [status(kubectl, n, namespace) for n in ("a", "b")]
        assert any(s.get("phase") == "Succeeded" for s in done), done
        for name in ("a", "b", "c"):
            wait_phase(kubectl, name, namespace, "Succeeded", timeout=60)
        total = time.monotonic() - t0
    print(f"a+b admitted and Running in {admitted:.1f}s; all three Succeeded in {total:.1f}s; "
          f"phases {rec.phases}; suspend {rec.suspend}; Job updates {rec.job_updates}")
    assert not rec.errors, rec.errors
    c_start = job_of(kubectl, "c", namespace)["status"]["startTime"]
    first_done = min(status(kubectl, n, namespace)["completionTime"] for n in ("a", "b"))
    assert c_start >= first_done, (c_start, first_done)
    for name in ("a", "b", "c"):
        job = job_of(kubectl, name, namespace)
        # Created suspended, admitted once: exactly one true -> false, never flipped back.
        assert rec.transitions(job) == [True, False], (name, rec.suspend)
        assert "Failed" not in rec.phases[name]
        assert status(kubectl, name, namespace)["restarts"] == 0
    assert rec.phases["c"][:1] == ["Queued"] or rec.phases["c"][:2] == ["Pending", "Queued"]


def priority_classes(kubectl: Kubectl) -> None:
    """Two PriorityClasses; Kueue reads a Job's priority from its pods' class. The scheduler
    must not preempt on its own (nodes have room anyway): preemptionPolicy Never."""
    kubectl.apply([{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                    "metadata": {"name": name}, "value": value, "preemptionPolicy": "Never"}
                   for name, value in ((LOW, 100), (HIGH, 1000))])


def test_preempted_job_goes_back_to_queued_not_failed(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess,
        queues: Callable[..., str], api: client.ApiClient) -> None:
    priority_classes(kubectl)
    queues(gpus=8, preemption={"withinClusterQueue": "LowerPriority"})
    with Recorder(api, namespace) as rec:
        apply(kubectl, namespace, tj("low", 8, "10s", LOW))
        wait_phase(kubectl, "low", namespace, "Running")
        t0 = time.monotonic()
        apply(kubectl, namespace, tj("high", 8, "3s", HIGH))
        st = wait_phase(kubectl, "low", namespace, "Queued", timeout=30)
        preempted = time.monotonic() - t0
        low_job = job_of(kubectl, "low", namespace)
        assert low_job["spec"]["suspend"] is True
        evicted = condition(workload_of(kubectl, low_job), "Evicted")
        print(f"\nlow preempted after {preempted:.1f}s: TrainingJob says {st['message']!r}; "
              f"Workload Evicted={evicted.get('status')} {evicted.get('reason')}: "
              f"{evicted.get('message')!r}")
        wait_phase(kubectl, "high", namespace, "Running", timeout=30)
        assert status(kubectl, "low", namespace)["phase"] == "Queued"
        wait_phase(kubectl, "high", namespace, "Succeeded", timeout=60)
        st = wait_phase(kubectl, "low", namespace, "Succeeded", timeout=90)
    print(f"phases {rec.phases}; suspend {rec.suspend}; Job updates {rec.job_updates}")
    assert not rec.errors, rec.errors
    # The same Job, suspended and resumed: no group restart, no failure counted.
    assert st["restarts"] == 0 and st["attempt"] == 0 and st["workers"]["failed"] == 0, st
    low_phases = rec.phases["low"]
    assert "Failed" not in low_phases
    first_run = low_phases.index("Running")
    assert "Queued" in low_phases[first_run:], low_phases
    low_job = job_of(kubectl, "low", namespace)
    assert rec.transitions(low_job) == [True, False, True, False], rec.suspend
    assert rec.transitions(job_of(kubectl, "high", namespace)) == [True, False], rec.suspend


def test_deactivated_workload_holds_the_job_until_reactivated(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess,
        queues: Callable[..., str], api: client.ApiClient) -> None:
    """Kueue's own way to hold a queued job: Workload.spec.active=false evicts it (the Job is
    suspended, its pods go); true again queues it for admission."""
    queues(gpus=8)
    with Recorder(api, namespace) as rec:
        apply(kubectl, namespace, tj("held", 4, "6s"))
        wait_phase(kubectl, "held", namespace, "Running")
        job = job_of(kubectl, "held", namespace)
        wl = workload_of(kubectl, job)
        set_active(kubectl, wl, False)
        st = wait_phase(kubectl, "held", namespace, "Queued", timeout=30)
        evicted = condition(kubectl.get("workloads.kueue.x-k8s.io", wl["metadata"]["name"],
                                        namespace) or {}, "Evicted")
        print(f"\ndeactivated: TrainingJob says {st['message']!r}; Workload Evicted="
              f"{evicted.get('status')} {evicted.get('reason')}: {evicted.get('message')!r}")

        def held() -> bool:
            assert status(kubectl, "held", namespace)["phase"] == "Queued"
            assert job_of(kubectl, "held", namespace)["spec"]["suspend"] is True
            assert not [p for p in kubectl.items("pods", namespace,
                                                 "slipway.dev/trainingjob=held")
                        if not p["metadata"].get("deletionTimestamp")]
            return True

        wait_for(held, 30, what="held's pods gone")
        stays(held, 5, "a deactivated job stays suspended")
        set_active(kubectl, wl, True)
        st = wait_phase(kubectl, "held", namespace, "Succeeded", timeout=60)
    print(f"phases {rec.phases}; suspend {rec.suspend}; Job updates {rec.job_updates}")
    assert not rec.errors, rec.errors
    assert st["restarts"] == 0 and st["workers"]["failed"] == 0, st
    assert "Failed" not in rec.phases["held"]
    assert rec.transitions(job) == [True, False, True, False], rec.suspend



def test_local_queue_hold_and_drain_sends_running_jobs_back_to_queued(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess,
        queues: Callable[..., str], api: client.ApiClient) -> None:
    """Kueue's hold for a whole queue: LocalQueue stopPolicy HoldAndDrain evicts what runs
    (Queued, not Failed); None lets it run again."""
    queues(gpus=8)

    def stop_policy(value: str) -> None:
        kubectl("patch", "localqueue", QUEUE, "-n", namespace, "--type=merge",
                "-p", f'{{"spec":{{"stopPolicy":"{value}"}}}}')

    with Recorder(api, namespace) as rec:
        apply(kubectl, namespace, tj("drained", 4, "5s"))
        wait_phase(kubectl, "drained", namespace, "Running")
        stop_policy("HoldAndDrain")
        st = wait_phase(kubectl, "drained", namespace, "Queued", timeout=30)
        job = job_of(kubectl, "drained", namespace)
        evicted = condition(workload_of(kubectl, job), "Evicted")
        print(f"\ndrained: TrainingJob says {st['message']!r}; Workload Evicted="
              f"{evicted.get('status')} {evicted.get('reason')}: {evicted.get('message')!r}")
        def queued() -> None:
            assert status(kubectl, "drained", namespace)["phase"] == "Queued"

        stays(queued, 3, "a drained queue's job stays Queued")
        stop_policy("None")
        st = wait_phase(kubectl, "drained", namespace, "Succeeded", timeout=60)
    assert not rec.errors, rec.errors
    assert st["restarts"] == 0 and "Failed" not in rec.phases["drained"], rec.phases
    assert rec.transitions(job) == [True, False, True, False], rec.suspend


# Before Slipway held queued jobs through their Workload, runPolicy.suspend patched
# Job.spec.suspend=true, Kueue started the admitted Job again, Slipway re-suspended it: 75 to
# 157 transitions of Job.spec.suspend in 5 s when measured.


@pytest.mark.parametrize("when", ["after-admission", "from-creation"])
def test_run_policy_suspend_of_a_queued_job_does_not_fight_kueue(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess,
        queues: Callable[..., str], api: client.ApiClient, when: str) -> None:
    """Slipway's own hold on a job in a queue with room: once Kueue admits it, the Job must
    stay suspended (at most one admission, which the hold undoes) rather than flap; lifting
    the hold lets it run to the end."""
    queues(gpus=8)
    with Recorder(api, namespace) as rec:
        if when == "after-admission":
            apply(kubectl, namespace, tj("mine", 4, "6s"))
            wait_phase(kubectl, "mine", namespace, "Running")
            kubectl("patch", "tj", "mine", "-n", namespace, "--type=merge",
                    "-p", '{"spec":{"runPolicy":{"suspend":true}}}')
        else:
            apply(kubectl, namespace, tj("mine", 4, "6s", runPolicy={"suspend": True}))
            workload_of(kubectl, job_of(kubectl, "mine", namespace))
        wait_phase(kubectl, "mine", namespace, "Queued", timeout=30)
        time.sleep(3)
        job = job_of(kubectl, "mine", namespace)
        flips = list(rec.transitions(job))
        updates = rec.job_updates.get(job["metadata"]["name"], 0)
        st = status(kubectl, "mine", namespace)
        print(f"\n{when}: 3 s into runPolicy.suspend: {len(flips) - 1} suspend transitions "
              f"({flips[:6]}...), {updates} Job updates, phases {rec.phases.get('mine')}")
        # Lift the hold before judging, so that a fight ends here, not with the namespace.
        kubectl("patch", "tj", "mine", "-n", namespace, "--type=merge",
                "-p", '{"spec":{"runPolicy":{"suspend":false}}}')
        wait_phase(kubectl, "mine", namespace, "Succeeded", timeout=60)
    assert not rec.errors, rec.errors
    assert len(flips) <= 3 and flips[-1] is True, f"Slipway and Kueue fight: {flips}"
    assert st["phase"] == "Queued" and "runPolicy.suspend" in st["message"], st


def test_queued_message_carries_kueues_reason(
        kubectl: Kubectl, namespace: str, operator: OperatorProcess,
        queues: Callable[..., str]) -> None:
    queues(gpus=4)
    apply(kubectl, namespace, tj("first", 4, "30s"))
    wait_phase(kubectl, "first", namespace, "Running")
    apply(kubectl, namespace, tj("second", 4, "2s"))
    wait_phase(kubectl, "second", namespace, "Queued")

    def explained() -> dict[str, Any]:
        st = status(kubectl, "second", namespace)
        assert "insufficient unused quota" in st.get("message", ""), st.get("message")
        return st

    # Longer than the operator's 15 s resync: Workload changes are not Job events.
    wait_for(explained, 20, interval=0.5, what="Kueue's reason in status.message")


@pytest.mark.skipif(not os.environ.get("SLIPWAY_TEST_TRAINING_OPERATOR"),
                    reason="builds Kubeflow's training-operator (~2 min cold); set "
                           "SLIPWAY_TEST_TRAINING_OPERATOR=1")
def test_training_operator_creates_a_pytorchjobs_pods(
        cluster: Cluster, kubectl: Kubectl, namespace: str) -> None:
    """Smoke test of the on-demand peer: a 1-master PyTorchJob gets its pod (owned by the
    PyTorchJob, with the torch environment) and a Service, and goes Running."""
    from slipway.devcluster.peers import start_training_operator

    t0 = time.monotonic()
    start_training_operator(cluster, threads=2, qps=50, burst=75)
    print(f"\ntraining-operator up in {time.monotonic() - t0:.1f}s "
          f"(build {cluster.timings.get('training-operator-build')}s)")
    apply(kubectl, namespace, {
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "smoke"},
        "spec": {"pytorchReplicaSpecs": {"Master": {
            "replicas": 1, "restartPolicy": "OnFailure",
            "template": {"metadata": {"annotations": {"slipway.dev/fake-duration": "2s"}},
                         "spec": {"containers": [{"name": "pytorch",
                                                  "image": "trainer:1"}]}}}}}})
    pods = wait_for(lambda: kubectl.items("pods", namespace,
                                          "training.kubeflow.org/job-name=smoke"),
                    60, what="the PyTorchJob's pod")
    assert len(pods) == 1
    pod = pods[0]
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "PyTorchJob"
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
    assert env.get("MASTER_PORT") and env.get("WORLD_SIZE") == "1", env
    assert kubectl.get("service", "smoke-master-0", namespace) is not None

    def running() -> bool:
        job = kubectl.get("pytorchjob", "smoke", namespace) or {}
        assert condition(job, "Running").get("status") == "True", job.get("status")
        return True

    wait_for(running, 60, what="PyTorchJob smoke Running")
