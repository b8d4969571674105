"""Misbehaving model versions carried in the artifact: the ``flaky`` and ``slow`` qualities.

Unit tests of the wrappers in ``slipway_runtimes.faults``, of the trainer options that write
them, and end-to-end checks with a real scikit-learn server process serving the trained files.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import requests
from conftest import Server, sample, server_command
from kserve.errors import InferenceError
from prometheus_client import CollectorRegistry
from sklearn.linear_model import LogisticRegression

from slipway_runtimes import trainer
from slipway_runtimes.faults import FlakyModel, InjectedFault, SlowModel
from slipway_runtimes.metrics import SlipwayMetrics
from slipway_runtimes.sklearn_server import SKLearnModel

Metrics = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def fitted() -> tuple[LogisticRegression, np.ndarray]:
    data = trainer.make_dataset()
    return LogisticRegression(random_state=0).fit(data.x_train, data.y_train), data.x_heldout


def outcomes(model: Any, calls: int, rows: np.ndarray) -> list[bool]:
    """True for each call that raised InjectedFault."""
    failed = []
    for _ in range(calls):
        try:
            model.predict(rows)
        except InjectedFault:
            failed.append(True)
        else:
            failed.append(False)
    return failed


# --- FlakyModel -------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.1, 0.3, 0.7])
def test_flaky_fails_about_the_share_of_calls(share: float, fitted: Any) -> None:
    model, rows = fitted
    failed = outcomes(FlakyModel(model, share, seed=1), 500, rows[:3])
    # sd of the observed share over 500 calls is at most 0.022: +-0.08 is over 3.5 sd.
    assert abs(np.mean(failed) - share) < 0.08


def test_flaky_extremes(fitted: Any) -> None:
    model, rows = fitted
    assert not any(outcomes(FlakyModel(model, 0.0), 200, rows[:2]))
    assert all(outcomes(FlakyModel(model, 1.0), 200, rows[:2]))


def test_flaky_draws_per_call_from_its_seed(fitted: Any) -> None:
    model, rows = fitted
    first = outcomes(FlakyModel(model, 0.5, seed=7), 100, rows[:1])
    assert 0 < sum(first) < 100  # per call: neither always nor never
    assert outcomes(FlakyModel(model, 0.5, seed=7), 100, rows[:1]) == first
    assert outcomes(FlakyModel(model, 0.5, seed=8), 100, rows[:1]) != first
    # One draw per call, whatever the batch size: the pattern does not depend on the rows.
    assert outcomes(FlakyModel(model, 0.5, seed=7), 100, rows[:50]) == first


def test_flaky_answers_like_the_wrapped_model_when_it_does_not_fail(fitted: Any) -> None:
    model, rows = fitted
    flaky = FlakyModel(model, 0.3, seed=3)
    answered = 0
    for _ in range(50):
        try:
            np.testing.assert_array_equal(flaky.predict(rows), model.predict(rows))
            np.testing.assert_array_equal(flaky.predict_proba(rows), model.predict_proba(rows))
            answered += 1
        except InjectedFault as e:
            assert "fails 30.0% of" in str(e)
    assert 0 < answered < 50


def test_flaky_survives_pickling_with_its_generator(fitted: Any, tmp_path: Path) -> None:
    model, rows = fitted
    joblib.dump(FlakyModel(model, 0.4, seed=5), tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    assert isinstance(loaded, FlakyModel) and loaded.fail_share == 0.4
    # A freshly saved artifact starts from the seed: same failures as a new wrapper.
    assert outcomes(loaded, 100, rows[:2]) == outcomes(FlakyModel(model, 0.4, seed=5), 100, rows)


def test_injected_fault_is_a_server_error_not_bad_input(fitted: Any, tmp_path: Path) -> None:
    # The servers answer ValueError with 400; an injected fault must be a 500 (InferenceError).
    assert not issubclass(InjectedFault, ValueError)
    joblib.dump(FlakyModel(fitted[0], 1.0), tmp_path / "model.joblib")
    served = SKLearnModel("m", str(tmp_path), "v", SlipwayMetrics.create(CollectorRegistry()))
    served.load()
    with pytest.raises(InferenceError, match="InjectedFault: injected fault"):
        served.predict({"instances": fitted[1][:2].tolist()})


@pytest.mark.parametrize("share", [-0.1, 1.01, math.nan, "lots"])
def test_flaky_rejects_a_share_outside_0_1(share: Any, fitted: Any) -> None:
    with pytest.raises(ValueError):
        FlakyModel(fitted[0], share)


# --- SlowModel --------------------------------------------------------------------------------


def test_slow_adds_latency_to_every_call_and_answers_the_same(fitted: Any) -> None:
    model, rows = fitted
    slow = SlowModel(model, 50)
    for method in ("predict", "predict_proba"):
        for _ in range(3):
            started = time.perf_counter()
            got = getattr(slow, method)(rows)
            assert time.perf_counter() - started >= 0.05
            np.testing.assert_array_equal(got, getattr(model, method)(rows))


def test_slow_survives_pickling(fitted: Any) -> None:
    model, rows = fitted
    loaded = pickle.loads(pickle.dumps(SlowModel(model, 20)))
    assert isinstance(loaded, SlowModel) and loaded.added_latency_ms == 20
    np.testing.assert_array_equal(loaded.predict(rows), model.predict(rows))


@pytest.mark.parametrize("ms", [-1, math.inf, math.nan])
def test_slow_rejects_a_bad_latency(ms: float, fitted: Any) -> None:
    with pytest.raises(ValueError):
        SlowModel(fitted[0], ms)


# --- trainer ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Train sklearn models once for the module, keyed by the extra argv."""
    cache: dict[tuple[str, ...], Path] = {}

    def _get(*argv: str) -> Path:
        if argv not in cache:
            out = tmp_path_factory.mktemp("trained")
            assert trainer.main(["--output-dir", str(out), *argv], env={}) == 0
            cache[argv] = out
        return cache[argv]

    return _get


def load_served(model_dir: Path) -> SKLearnModel:
    model = SKLearnModel(
        "example", str(model_dir), "test", SlipwayMetrics.create(CollectorRegistry())
    )
    model.load()
    return model


def test_trainer_flaky_writes_a_flaky_wrapper_of_the_good_model(trained: Any) -> None:
    out = trained("--quality", "flaky")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["quality"] == "flaky" and meta["fail_share"] == trainer.DEFAULT_FAIL_SHARE == 0.3
    assert "added_latency_ms" not in meta
    assert meta["heldout_accuracy"] > 0.85  # the wrapped model is the good one

    artifact = joblib.load(out / "model.joblib")
    assert isinstance(artifact, FlakyModel)
    assert (artifact.fail_share, artifact.seed) == (0.3, trainer.DEFAULT_SEED)
    good = joblib.load(trained("--quality", "good") / "model.joblib")
    rows = trainer.make_dataset().x_heldout
    failed = 0
    for _ in range(300):
        try:
            np.testing.assert_array_equal(artifact.predict(rows), good.predict(rows))
        except InjectedFault:
            failed += 1
    assert 0.2 < failed / 300 < 0.4


def test_trainer_slow_writes_a_slow_wrapper_of_the_good_model(trained: Any) -> None:
    out = trained("--quality", "slow")
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["quality"] == "slow" and meta["added_latency_ms"] == 200
    assert "fail_share" not in meta
    artifact = joblib.load(out / "model.joblib")
    assert isinstance(artifact, SlowModel) and artifact.added_latency_ms == 200

    good = load_served(trained("--quality", "good"))
    slow = load_served(out)
    rows = trainer.make_dataset().x_heldout
    started = time.perf_counter()
    got = slow.predict_array(rows)
    assert time.perf_counter() - started >= 0.2
    np.testing.assert_array_equal(got, good.predict_array(rows))


def test_trainer_fault_options_from_flags_and_environment(tmp_path: Path) -> None:
    env = {
        "SLIPWAY_OUTPUT_DIR": str(tmp_path / "env"),
        "SLIPWAY_TRAINER_QUALITY": "flaky",
        "SLIPWAY_TRAINER_FAIL_SHARE": "0.75",
        "SLIPWAY_TRAINER_ADDED_LATENCY_MS": "15",
        "SLIPWAY_TRAINER_SEED": "4",
    }
    assert trainer.main([], env=env) == 0
    flaky = joblib.load(tmp_path / "env" / "model.joblib")
    assert (flaky.fail_share, flaky.seed) == (0.75, 4)

    assert trainer.main(["--fail-share", "0.05"], env=env) == 0  # the flag wins
    assert joblib.load(tmp_path / "env" / "model.joblib").fail_share == 0.05

    assert trainer.main(["--quality", "slow"], env=env) == 0
    assert joblib.load(tmp_path / "env" / "model.joblib").added_latency_ms == 15
    assert trainer.main(["--quality", "slow", "--added-latency-ms", "0"], env=env) == 0
    assert joblib.load(tmp_path / "env" / "model.joblib").added_latency_ms == 0


@pytest.mark.parametrize("quality", ["flaky", "slow"])
@pytest.mark.parametrize("via_env", [False, True])
def test_trainer_refuses_faults_in_xgboost_format(
    quality: str, via_env: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"SLIPWAY_OUTPUT_DIR": str(tmp_path)}
    argv = ["--format", "xgboost", "--quality", quality]
    if via_env:
        env |= {"SLIPWAY_OUTPUT_FORMAT": "xgboost", "SLIPWAY_TRAINER_QUALITY": quality}
        argv = []
    assert trainer.main(argv, env=env) == 2
    err = capsys.readouterr().err
    assert err == (
        f"slipway-example-trainer: error: quality {quality} needs format sklearn, not xgboost: "
        "the fault travels in a pickled wrapper in model.joblib, which model.ubj cannot hold\n"
    )
    assert list(tmp_path.iterdir()) == []


# --- real server processes --------------------------------------------------------------------

VERSION = "v2-canary"
IDS = {"model_name": "example", "model_version": VERSION}


def start(run_server: Any, model_dir: Path) -> Server:
    env = {**os.environ, "MODEL_VERSION": VERSION}
    srv: Server = run_server(server_command("sklearn_server", model_dir), "example", env)
    return srv


def delta(before: Metrics, after: Metrics, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


def histogram_quantile(
    q: float, before: Metrics, after: Metrics, name: str, **labels: str
) -> float:
    """Prometheus' histogram_quantile over the increase of ``name``'s buckets."""
    buckets = sorted(
        (float(dict(lbls)["le"]), value - before.get((n, lbls), 0.0))
        for (n, lbls), value in after.items()
        if n == f"{name}_bucket" and {k: v for k, v in lbls if k != "le"} == labels
    )
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    raise AssertionError("unreachable: the +Inf bucket holds every observation")


@pytest.fixture(scope="module")
def good_predictions(trained: Any) -> Any:
    good = joblib.load(trained("--quality", "good") / "model.joblib")
    return lambda rows: good.predict(np.asarray(rows)).tolist()


@pytest.fixture(scope="module")
def flaky_server(run_server: Any, trained: Any) -> Iterator[Server]:
    srv = start(run_server, trained("--quality", "flaky"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def slow_server(run_server: Any, trained: Any) -> Iterator[Server]:
    srv = start(run_server, trained("--quality", "slow"))
    yield srv
    srv.stop()


def test_flaky_server_answers_500_and_counts_5xx(
    flaky_server: Server, good_predictions: Any
) -> None:
    calls = 300
    rows = trainer.sample_payloads(n=calls + 1)
    before = flaky_server.metrics()
    codes: dict[str, list[int]] = {"v1": [], "v2": []}
    for i in range(calls):
        batch = rows[i : i + 2]
        protocol = "v1" if i % 2 == 0 else "v2"
        resp = flaky_server.v1(batch) if protocol == "v1" else flaky_server.v2(batch)
        codes[protocol].append(resp.status_code)
        if resp.status_code == 200:
            body = resp.json()
            got = body["predictions"] if protocol == "v1" else body["outputs"][0]["data"]
            assert got == good_predictions(batch)
        else:
            assert resp.status_code == 500, resp.text
            assert "InjectedFault: injected fault" in resp.json()["error"]
    after = flaky_server.metrics()

    failed = sum(c == 500 for c in codes["v1"] + codes["v2"])
    print(f"flaky server: {failed}/{calls} requests answered 500 ({failed / calls:.1%})")
    assert 0.2 < failed / calls < 0.4
    req, err = "slipway_model_requests_total", "slipway_model_errors_total"
    for protocol, got in codes.items():
        n500, n200 = got.count(500), got.count(200)
        assert n500 > 0 and n200 > 0
        assert delta(before, after, req, **IDS, protocol=protocol, code="5xx") == n500
        assert delta(before, after, req, **IDS, protocol=protocol, code="2xx") == n200
        assert delta(before, after, req, **IDS, protocol=protocol, code="4xx") == 0
        assert delta(before, after, err, **IDS, protocol=protocol, reason="internal_error") == n500
    # Only answered calls reach the prediction histogram: two rows per successful request.
    answered = sum(c == 200 for c in codes["v1"] + codes["v2"])
    assert delta(before, after, "slipway_model_prediction_count", **IDS) == 2 * answered


def test_slow_server_latency_shows_in_the_duration_histogram(
    slow_server: Server, good_predictions: Any
) -> None:
    added = trainer.DEFAULT_ADDED_LATENCY_MS / 1000
    calls = 25
    rows = trainer.sample_payloads(n=calls + 2)
    before = slow_server.metrics()
    latencies = []
    for i in range(calls):
        batch = rows[i : i + 3]
        started = time.perf_counter()
        resp = slow_server.v1(batch)
        latencies.append(time.perf_counter() - started)
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == good_predictions(batch)
    after = slow_server.metrics()

    name, labels = "slipway_model_request_duration_seconds", {**IDS, "protocol": "v1"}
    assert delta(before, after, f"{name}_count", **labels) == calls
    mean = delta(before, after, f"{name}_sum", **labels) / calls
    p99 = histogram_quantile(0.99, before, after, name, **labels)
    client_p99 = float(np.percentile(latencies, 99))
    print(
        f"slow server: server p99 {p99 * 1000:.0f} ms (histogram_quantile), mean "
        f"{mean * 1000:.1f} ms; client min {min(latencies) * 1000:.1f} ms, "
        f"p99 {client_p99 * 1000:.1f} ms"
    )
    assert p99 > added
    assert mean >= added  # _sum is exact, unlike a quantile interpolated inside a bucket
    assert delta(before, after, f"{name}_bucket", **labels, le="0.1") == 0  # none was fast
    assert min(latencies) >= added
    assert delta(before, after, "slipway_model_requests_total", **labels, code="2xx") == calls


def test_slow_server_keeps_answering_concurrent_requests(slow_server: Server) -> None:
    # kserve calls a synchronous predict() on its event loop, so the sleep holds up every other
    # request meanwhile: concurrent requests queue, but all of them are answered.
    rows = trainer.sample_payloads(n=2)
    statuses: list[int] = []

    def call() -> None:
        statuses.append(slow_server.v1(rows).status_code)

    threads = [threading.Thread(target=call) for _ in range(4)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    elapsed = time.perf_counter() - started
    print(f"slow server: 4 concurrent requests answered in {elapsed * 1000:.0f} ms")
    assert statuses == [200] * 4
    assert requests.get(slow_server.base_url + "/v2/health/ready", timeout=10).status_code == 200
