"""Merging a user's partial PodSpec into the generated one."""

from __future__ import annotations

from slipway.builders.podmerge import merge

BASE = {
    "restartPolicy": "Never",
    "containers": [{"name": "trainer", "image": "t:1", "env": [
        {"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
        {"name": "A", "value": "1"}]}],
    "volumes": [{"name": "checkpoint", "persistentVolumeClaim": {"claimName": "ckpt"}}],
}


def test_containers_merge_by_name_and_new_ones_are_appended() -> None:
    out = merge(BASE, {"containers": [
        {"name": "trainer", "resources": {"limits": {"memory": "1Gi"}}},
        {"name": "sidecar", "image": "s:1"}]})
    assert [c["name"] for c in out["containers"]] == ["trainer", "sidecar"]
    trainer = out["containers"][0]
    assert trainer["image"] == "t:1" and trainer["resources"]["limits"]["memory"] == "1Gi"


def test_an_env_var_of_the_same_name_is_replaced_not_merged() -> None:
    out = merge(BASE, {"containers": [{"name": "trainer", "env": [
        {"name": "NODE_RANK", "value": "0"}]}]})
    env = {e["name"]: e for e in out["containers"][0]["env"]}
    assert env["NODE_RANK"] == {"name": "NODE_RANK", "value": "0"}  # no valueFrom left over
    assert env["A"] == {"name": "A", "value": "1"}


def test_a_volume_of_the_same_name_is_replaced_not_merged() -> None:
    out = merge(BASE, {"volumes": [{"name": "checkpoint", "emptyDir": {}}]})
    assert out["volumes"] == [{"name": "checkpoint", "emptyDir": {}}]


def test_the_inputs_are_not_modified() -> None:
    before = repr(BASE)
    merge(BASE, {"containers": [{"name": "trainer", "image": "other"}]})
    assert repr(BASE) == before
