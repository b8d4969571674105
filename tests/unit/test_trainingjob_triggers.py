"""Which watch events and Job states cost the TrainingJob controller API requests."""

from __future__ import annotations

from typing import Any

from slipway.api.trainingjob import TrainingJobSpec
from slipway.controllers.trainingjob import _needs_reconcile, _waiting_for_workers


def tj(generation: int, status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "t", "namespace": "ns", "generation": generation},
            "spec": {}, "status": status or {}}


def test_only_new_objects_and_unobserved_specs_are_reconciled_from_watch_events() -> None:
    assert _needs_reconcile("ADDED", tj(1))
    assert _needs_reconcile("MODIFIED", tj(2, {"observedGeneration": 1, "phase": "Running"}))
    # A status write (Slipway's own, most often) leaves the generation observed.
    assert not _needs_reconcile("MODIFIED", tj(2, {"observedGeneration": 2,
                                                   "phase": "Running"}))
    # A relist picks up only specs not yet observed; the resync loop covers the rest.
    assert not _needs_reconcile(None, tj(2, {"observedGeneration": 2, "phase": "Pending"}))
    assert _needs_reconcile(None, tj(3, {"observedGeneration": 2, "phase": "Pending"}))
    # A finished job is never re-run, whatever the edit.
    assert not _needs_reconcile("MODIFIED", tj(3, {"observedGeneration": 2,
                                                   "phase": "Succeeded"}))


def job(**status: int) -> dict[str, Any]:
    return {"metadata": {"name": "j"}, "spec": {}, "status": status}


def test_pods_are_read_only_while_some_exist_unready() -> None:
    spec = TrainingJobSpec.model_validate({"image": "i", "workers": 2})
    assert not _waiting_for_workers(spec, job())  # none made yet: nothing to read
    assert _waiting_for_workers(spec, job(active=2, ready=1))
    assert not _waiting_for_workers(spec, job(active=2, ready=2))
    assert not _waiting_for_workers(spec, job(active=1, ready=1, succeeded=1))


def test_a_finishing_job_stays_running_without_reading_its_pods() -> None:
    from slipway.status.trainingjob import observe

    spec = TrainingJobSpec.model_validate({"image": "i", "workers": 1})
    finishing = {"metadata": {"name": "j"}, "spec": {},
                 "status": {"active": 0, "ready": 0, "succeeded": 0,
                            "uncountedTerminatedPods": {"succeeded": ["uid-1"]}}}
    assert not _waiting_for_workers(spec, finishing)
    tj_ = {**tj(1, {"phase": "Running", "observedGeneration": 1}), "spec": {"image": "i"}}
    obs = observe(spec, tj_, finishing, None, "2026-01-01T00:00:00Z")
    assert obs.status["phase"] == "Running" and obs.events == []
