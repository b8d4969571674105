"""What an idle operator costs the API server: one LIST per kind per resync tick, not a GET
and LISTs per object, and no no-op PATCH. Then a sequence on the same objects: a deleted Job
of a settled (Running) TrainingJob comes back by its event, and an edited InferenceService
field of a settled ModelDeployment is put back."""

from __future__ import annotations

import re
import time
import urllib.request
from collections import Counter

import yaml

from tests.helpers import Kubectl, OperatorProcess, wait_for

RUNNING, FINISHED, STOPPED_MDS = 15, 15, 5
TICK = 3.0  # the session operator's resync interval (OperatorProcess default)


def requests(op: OperatorProcess) -> Counter[tuple[str, str]]:
    """slipway_api_requests_total by (verb, resource), from the operator's /metrics."""
    url = f"http://127.0.0.1:{op.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: Counter[tuple[str, str]] = Counter()
    for m in re.finditer(r'^slipway_api_requests_total\{resource="([^"]+)",verb="([^"]+)"\} '
                         r'([0-9.e+]+)$', text, re.M):
        out[(m.group(2), m.group(1))] = int(float(m.group(3)))
    return out


def objects() -> str:
    docs = []
    for i in range(RUNNING):
        docs.append({"kind": "TrainingJob", "metadata": {"name": f"run-{i:02d}"}, "spec": {
            "image": "trainer:1", "distributed": {} if i % 3 == 0 else None,
            "workers": 2 if i % 3 == 0 else 1,
            "podTemplate": {"metadata": {"annotations": {
                "slipway.dev/fake-duration": "3600s"}}}}})
    for i in range(FINISHED):
        docs.append({"kind": "TrainingJob", "metadata": {"name": f"done-{i:02d}"},
                     "spec": {"image": "trainer:1"}})
    for i in range(STOPPED_MDS):
        docs.append({"kind": "ModelDeployment", "metadata": {"name": f"md-{i}"}, "spec": {
            "stopped": True, "model": {"format": "sklearn", "version": "v1",
                                       "uri": f"s3://models/idle/{i}"}}})
    for d in docs:
        d["apiVersion"] = "slipway.dev/v1alpha1"
        d["spec"] = {k: v for k, v in d["spec"].items() if v is not None}
    return yaml.safe_dump_all(docs)


def phases(kubectl: Kubectl, namespace: str, kind: str) -> Counter[str]:
    items = kubectl.items(kind, namespace)
    return Counter((o.get("status") or {}).get("phase") or "" for o in items)


def test_idle_operator_makes_no_per_object_requests(kubectl: Kubectl, namespace: str,
                                                     operator: OperatorProcess) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=objects())
    wait_for(lambda: phases(kubectl, namespace, "trainingjobs")
             == Counter({"Running": RUNNING, "Succeeded": FINISHED}),
             timeout=120, what="every TrainingJob Running or Succeeded")
    wait_for(lambda: phases(kubectl, namespace, "modeldeployments")
             == Counter({"Stopped": STOPPED_MDS}), timeout=60, what="ModelDeployments Stopped")
    # Earlier tests' namespaces still being deleted would wake their objects meanwhile.
    wait_for(lambda: "Terminating" not in kubectl(
        "get", "namespaces", "-o", "jsonpath={.items[*].status.phase}").stdout,
             timeout=180, what="no namespace terminating")
    time.sleep(3 * TICK)  # Kopf's own post-handler patches, then a tick that settles them

    ticks = 5
    before = requests(operator)
    time.sleep(ticks * TICK)
    delta = requests(operator) - before
    objects_total = RUNNING + FINISHED + STOPPED_MDS
    # Before: every tick did a GET per object, a LIST of Jobs (and of pods, Canaries) per
    # object and a server-side apply per InferenceService: ~5 x 35 GETs and LISTs here.
    per_object = {k: n for k, n in delta.items()
                  if k[0] in ("GET", "PATCH", "POST", "PUT", "DELETE")
                  or k in (("LIST", "jobs"), ("LIST", "pods"), ("LIST", "canaries"))}
    print(f"\nrequests over {ticks} idle ticks with {objects_total} objects: {dict(delta)}")
    assert delta[("LIST", "modeldeployments")] >= ticks - 1  # the ticks did run
    # ... and walked the TrainingJob watch's store instead of listing TrainingJobs.
    assert delta[("LIST", "trainingjobs")] == 0
    # Other tests' leftovers (namespaces being deleted) may still cost a little.
    assert sum(per_object.values()) < objects_total, per_object
    assert delta[("PATCH", "inferenceservices")] == 0
    assert delta[("PATCH", "trainingjobs")] == 0

    # A Job of a settled TrainingJob deleted: its event brings it back, no tick needed.
    job = kubectl.items("jobs", namespace, "slipway.dev/trainingjob=run-01")[0]["metadata"]
    kubectl("delete", "job", job["name"], "-n", namespace, "--wait=false")

    def recreated() -> bool:
        items = kubectl.items("jobs", namespace, "slipway.dev/trainingjob=run-01")
        return any(j["metadata"]["uid"] != job["uid"] for j in items)

    wait_for(recreated, timeout=30, what="the deleted Job re-created")

    # A settled ModelDeployment whose InferenceService is edited by hand gets it back.
    kubectl("annotate", "inferenceservice", "md-0", "-n", namespace, "--overwrite",
            "serving.kserve.io/stop=false")
    wait_for(lambda: (kubectl.get("inferenceservice", "md-0", namespace) or {})["metadata"]
             .get("annotations", {}).get("serving.kserve.io/stop") == "true",
             timeout=30, what="the stop annotation restored")
