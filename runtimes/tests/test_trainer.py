"""The example trainer: writes models the package's own servers load, and its Canary knobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from slipway_runtimes import trainer
from slipway_runtimes.base import SlipwayModel
from slipway_runtimes.metrics import SlipwayMetrics
from slipway_runtimes.sklearn_server import SKLearnModel
from slipway_runtimes.xgboost_server import XGBoostModel

MODEL_CLASSES: dict[str, type[SlipwayModel]] = {"sklearn": SKLearnModel, "xgboost": XGBoostModel}
ROOT = Path(__file__).resolve().parents[1]


def load(fmt: str, model_dir: Path) -> SlipwayModel:
    metrics = SlipwayMetrics.create(registry=CollectorRegistry())
    model = MODEL_CLASSES[fmt]("example", str(model_dir), "test", metrics)
    model.load()
    return model


def classes(fmt: str, model: SlipwayModel, rows: Any) -> np.ndarray:
    out = np.asarray(model.predict_array(np.asarray(rows, dtype=np.float32)))
    # The XGBoost server answers P(class 1); the sklearn one answers the class.
    return (out >= 0.5).astype(int) if fmt == "xgboost" else out.astype(int)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Train each (format, quality) once for the module; returns its output directory."""
    cache: dict[tuple[str, str], Path] = {}

    def _get(fmt: str, quality: str) -> Path:
        if (fmt, quality) not in cache:
            out = tmp_path_factory.mktemp(f"{fmt}-{quality}")
            argv = ["--output-dir", str(out), "--format", fmt, "--quality", quality]
            assert trainer.main(argv, env={}) == 0
            cache[fmt, quality] = out
        return cache[fmt, quality]

    return _get


def test_model_file_names_are_the_servers_first_choice() -> None:
    for fmt, cls in MODEL_CLASSES.items():
        assert trainer.MODEL_FILES[fmt] == cls.model_files[0]


def test_console_script_is_declared() -> None:
    # A text check: tomllib is not in Python 3.10, which this package supports.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '\nslipway-example-trainer = "slipway_runtimes.trainer:main"\n' in pyproject


@pytest.mark.parametrize("fmt", ["sklearn", "xgboost"])
def test_good_model_is_served_by_the_package_server(fmt: str, trained: Any) -> None:
    out = trained(fmt, "good")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [trainer.MODEL_FILES[fmt], "metadata.json"]
    )
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["format"] == fmt
    assert meta["quality"] == "good"
    assert meta["features"] == trainer.DEFAULT_FEATURES
    assert meta["version"] == "unversioned"
    assert meta["train_accuracy"] > 0.85

    model = load(fmt, out)
    assert model.model_path == out / trainer.MODEL_FILES[fmt]
    data = trainer.make_dataset()
    assert np.mean(classes(fmt, model, data.x_heldout) == data.y_heldout) > 0.85
    # The full V1 request path of the server, with the helper's payload rows.
    rows = trainer.sample_payloads(trainer.DEFAULT_FEATURES, n=5)
    assert len(rows) == 5 and all(len(r) == trainer.DEFAULT_FEATURES for r in rows)
    response = model.predict({"instances": rows})
    assert isinstance(response, dict)
    assert len(response["predictions"]) == 5


@pytest.mark.parametrize("fmt", ["sklearn", "xgboost"])
def test_bad_model_scores_about_chance(fmt: str, trained: Any) -> None:
    data = trainer.make_dataset()  # the same fixed held-out set for both models
    good_pred = classes(fmt, load(fmt, trained(fmt, "good")), data.x_heldout)
    bad_pred = classes(fmt, load(fmt, trained(fmt, "bad")), data.x_heldout)
    assert np.mean(good_pred == data.y_heldout) > 0.85
    assert 0.35 < np.mean(bad_pred == data.y_heldout) < 0.65
    # Unlike "shifted", its answers are not skewed to one class.
    assert 0.3 < np.mean(bad_pred == 1) < 0.7
    meta = json.loads((trained(fmt, "bad") / "metadata.json").read_text())
    assert meta["quality"] == "bad" and meta["heldout_accuracy"] < 0.65


@pytest.mark.parametrize("fmt", ["sklearn", "xgboost"])
def test_shifted_model_predicts_mostly_one(fmt: str, trained: Any) -> None:
    rows = trainer.make_dataset().x_heldout
    good = classes(fmt, load(fmt, trained(fmt, "good")), rows)
    shifted = classes(fmt, load(fmt, trained(fmt, "shifted")), rows)
    assert 0.3 < np.mean(good == 1) < 0.7
    assert np.mean(shifted == 1) > 0.9
    # Every request still succeeds: the shift is in the answers, not in errors.
    response = load(fmt, trained(fmt, "shifted")).predict({"instances": rows[:4].tolist()})
    assert isinstance(response, dict) and len(response["predictions"]) == 4


def test_training_is_deterministic(tmp_path: Path, trained: Any) -> None:
    assert trainer.main(["--output-dir", str(tmp_path), "--format", "xgboost"], env={}) == 0
    rows = trainer.make_dataset().x_heldout
    again = load("xgboost", tmp_path).predict_array(rows)
    first = load("xgboost", trained("xgboost", "good")).predict_array(rows)
    np.testing.assert_array_equal(again, first)


def test_environment_configures_everything(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "v7"  # created when missing
    env = {
        "SLIPWAY_OUTPUT_URI": f"file://{out}",
        "SLIPWAY_OUTPUT_FORMAT": "xgboost",
        "SLIPWAY_OUTPUT_VERSION": "v7",
        "SLIPWAY_TRAINER_QUALITY": "shifted",
        "SLIPWAY_TRAINER_FEATURES": "6",
    }
    assert trainer.main([], env=env) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert (meta["version"], meta["format"], meta["quality"], meta["features"]) == (
        "v7",
        "xgboost",
        "shifted",
        6,
    )
    model = load("xgboost", out)
    assert np.asarray(model.predict_array(trainer.sample_payloads(6))).shape == (8,)


def test_flags_win_over_environment(tmp_path: Path) -> None:
    env = {"SLIPWAY_OUTPUT_DIR": str(tmp_path / "env"), "SLIPWAY_OUTPUT_FORMAT": "xgboost"}
    argv = ["--output-dir", str(tmp_path / "flag"), "--format", "sklearn"]
    assert trainer.main(argv, env=env) == 0
    assert (tmp_path / "flag" / "model.joblib").is_file()
    assert not (tmp_path / "env").exists()


def test_output_dir_wins_over_uri(tmp_path: Path) -> None:
    env = {"SLIPWAY_OUTPUT_DIR": str(tmp_path), "SLIPWAY_OUTPUT_URI": "s3://models/x"}
    assert trainer.main([], env=env) == 0
    assert (tmp_path / "model.joblib").is_file()


def test_fail_knob_exits_with_the_code_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {"SLIPWAY_OUTPUT_DIR": str(tmp_path / "out"), "SLIPWAY_TRAINER_FAIL": "3"}
    assert trainer.main([], env=env) == 3
    assert "exit code 3" in capsys.readouterr().out
    assert trainer.main(["--fail-exit-code", "7"], env=env) == 7
    assert trainer.main(["--fail-exit-code", "0"], env=env) == 0  # the flag overrides
    assert (tmp_path / "out" / "model.joblib").is_file()
    assert trainer.main([], env={**env, "SLIPWAY_TRAINER_FAIL": "300"}) == 2


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "neither --output-dir, SLIPWAY_OUTPUT_DIR nor SLIPWAY_OUTPUT_URI is set"),
        ({"SLIPWAY_OUTPUT_URI": "s3://models/a/b"}, "scheme s3 is not writable from here"),
        ({"SLIPWAY_OUTPUT_URI": "/no/scheme"}, "scheme (none) is not writable from here"),
        ({"SLIPWAY_OUTPUT_DIR": "/tmp/x", "SLIPWAY_TRAINER_QUALITY": "great"}, "expected one of"),
        ({"SLIPWAY_OUTPUT_DIR": "/tmp/x", "SLIPWAY_TRAINER_FAIL": "yes"}, "expected an integer"),
        ({"SLIPWAY_OUTPUT_DIR": "/tmp/x", "SLIPWAY_TRAINER_FEATURES": "1"}, "at least 2"),
        ({"SLIPWAY_OUTPUT_DIR": "/tmp/x", "SLIPWAY_TRAINER_FAIL_SHARE": "1.5"}, "expected 0..1"),
        ({"SLIPWAY_OUTPUT_DIR": "/tmp/x", "SLIPWAY_TRAINER_FAIL_SHARE": "nan"}, "expected 0..1"),
        ({"SLIPWAY_OUTPUT_DIR": "/tmp/x", "SLIPWAY_TRAINER_FAIL_SHARE": "often"}, "a number"),
        ({"SLIPWAY_OUTPUT_DIR": "/tmp/x", "SLIPWAY_TRAINER_ADDED_LATENCY_MS": "-5"}, "at least 0"),
        (
            {
                "SLIPWAY_OUTPUT_DIR": "/tmp/x",
                "SLIPWAY_OUTPUT_FORMAT": "xgboost",
                "SLIPWAY_TRAINER_QUALITY": "flaky",
            },
            "quality flaky needs format sklearn, not xgboost",
        ),
    ],
)
def test_configuration_errors_exit_2(
    env: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert trainer.main([], env=env) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("slipway-example-trainer: error: ")


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith("SLIPWAY_")}
    cmd = [sys.executable, "-m", "slipway_runtimes.trainer", *args]
    return subprocess.run(cmd, env={**keep, **env}, capture_output=True, text=True, timeout=60)


def test_process_exit_codes_and_logs(tmp_path: Path) -> None:
    missing = _run({})
    assert missing.returncode == 2
    assert "neither" in missing.stderr and missing.stdout == ""

    failed = _run({"SLIPWAY_OUTPUT_DIR": str(tmp_path), "SLIPWAY_TRAINER_FAIL": "42"})
    assert failed.returncode == 42, failed.stderr
    assert not (tmp_path / "model.joblib").exists()

    ok = _run({"SLIPWAY_OUTPUT_DIR": str(tmp_path), "SLIPWAY_OUTPUT_VERSION": "2026.11"})
    assert ok.returncode == 0, ok.stderr
    assert "model version 2026.11" in ok.stdout
    assert "1000 rows x 4 features" in ok.stdout
    assert f"wrote {tmp_path / 'model.joblib'}" in ok.stdout
