"""Example trainer: the program of the image ``slipway/example-trainer`` of the TrainingJob samples.

It generates a deterministic synthetic binary classification dataset, trains a small model and
writes it where this package's servers load it from (``model.joblib`` for scikit-learn,
``model.ubj`` for XGBoost), plus a ``metadata.json``. Knobs exist for the Canary tests: a
deliberately bad model, a model with shifted predictions, a forced failure exit code, and two
misbehaviours carried in the model artifact itself (scikit-learn format only, see
:mod:`slipway_runtimes.faults`):

- ``--quality flaky``: the saved model raises on a share of predict calls (``--fail-share``,
  default 0.3), which the server answers with HTTP 500;
- ``--quality slow``: the saved model sleeps before every predict call
  (``--added-latency-ms``, default 200); its predictions are the good model's.

Every option has an environment variable; a flag wins over its variable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

import numpy as np

from .faults import FlakyModel, SlowModel

T = TypeVar("T")

PROG = "slipway-example-trainer"
FORMATS = ("sklearn", "xgboost")
QUALITIES = ("good", "bad", "shifted", "flaky", "slow")
# Qualities whose model is the good one wrapped in a slipway_runtimes.faults class; only a
# pickled (sklearn-format) artifact can carry the wrapper, an XGBoost .ubj holds just a Booster.
WRAPPED_QUALITIES = ("flaky", "slow")
# The first name each server looks for (SKLearnModel / XGBoostModel.model_files); a test keeps
# these in step without importing kserve here, which would slow the trainer's start-up.
MODEL_FILES = {"sklearn": "model.joblib", "xgboost": "model.ubj"}
METADATA_FILE = "metadata.json"

DEFAULT_FEATURES = 4
DEFAULT_SAMPLES = 1000
DEFAULT_SEED = 0
HELDOUT_FRACTION = 0.2
# "shifted": this share of class-0 training labels is relabelled 1, so the model answers 1 for
# nearly every input: a strongly different prediction distribution, yet no request fails.
SHIFT_RELABEL_SHARE = 0.8
XGB_ROUNDS = 20
DEFAULT_FAIL_SHARE = 0.3
DEFAULT_ADDED_LATENCY_MS = 200


class UsageError(Exception):
    """Bad configuration (flags, environment, output location); exit code 2."""


@dataclass(frozen=True)
class Dataset:
    x_train: np.ndarray
    y_train: np.ndarray
    x_heldout: np.ndarray
    y_heldout: np.ndarray


def make_dataset(
    n_features: int = DEFAULT_FEATURES, n_samples: int = DEFAULT_SAMPLES, seed: int = DEFAULT_SEED
) -> Dataset:
    """The same (features, samples, seed) always gives the same rows; the last
    ``HELDOUT_FRACTION`` of them are held out for evaluation. The last feature is pure noise
    (independent of the class), which the ``bad`` model learns from."""
    from sklearn.datasets import make_classification

    # shuffle=False keeps the column order (informative first, noise last); rows are shuffled
    # below, since unshuffled ones come sorted by class.
    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=min(n_features - 1, 3),
        n_redundant=0,
        n_clusters_per_class=1,  # valid down to a single informative feature
        class_sep=1.5,
        flip_y=0.02,
        shuffle=False,
        random_state=seed,
    )
    order = np.random.default_rng(seed).permutation(n_samples)
    x, y = x[order].astype(np.float32), y[order]  # float32: what a V2 FP32 request carries
    cut = n_samples - max(1, int(n_samples * HELDOUT_FRACTION))
    return Dataset(x[:cut], y[:cut], x[cut:], y[cut:])


def sample_payloads(
    n_features: int = DEFAULT_FEATURES, n: int = 8, seed: int = DEFAULT_SEED
) -> list[list[float]]:
    """``n`` held-out rows (never trained on) to send to a served model, as plain lists."""
    data = make_dataset(n_features, max(DEFAULT_SAMPLES, 5 * n), seed)
    rows: list[list[float]] = data.x_heldout[:n].tolist()
    return rows


def training_labels(x: np.ndarray, y: np.ndarray, quality: str, seed: int) -> np.ndarray:
    """Labels to train on: the true ones, noise (``bad``) or ones biased to 1 (``shifted``)."""
    if quality == "bad":
        # Labels that follow the pure-noise feature: the model answers 0 and 1 about as often
        # as the good one, but its answers are independent of the class, so accuracy ~ chance.
        # (Shuffled labels would also carry no signal, but a linear model fitted to them can
        # end up skewed to one class, mixing "bad" up with "shifted".)
        return (x[:, -1] > 0).astype(y.dtype)
    if quality == "shifted":
        rng = np.random.default_rng(seed)
        relabel = (y == 0) & (rng.random(len(y)) < SHIFT_RELABEL_SHARE)
        return np.where(relabel, 1, y)
    return y


def _fit_sklearn(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[Any, Callable[..., Any]]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(random_state=seed).fit(x, y)
    return model, model.predict


def _fit_xgboost(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[Any, Callable[..., Any]]:
    import xgboost as xgb

    params = {"objective": "binary:logistic", "max_depth": 3, "nthread": 1, "seed": seed}
    booster = xgb.train(params, xgb.DMatrix(x, label=y), num_boost_round=XGB_ROUNDS)

    # The server returns P(class 1); accuracy needs a class, so threshold at 0.5.
    def predict(rows: np.ndarray) -> np.ndarray:
        return (booster.predict(xgb.DMatrix(rows)) >= 0.5).astype(int)

    return booster, predict


def _save(model: Any, fmt: str, path: Path) -> None:
    # Write beside the target, then rename: a server never sees a half-written file, and the
    # ".tmp" suffix is not one the servers' model file discovery would pick up.
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        if fmt == "sklearn":
            import joblib

            joblib.dump(model, f)
        else:
            f.write(model.save_raw(raw_format="ubj"))  # the format model.ubj's suffix promises
    os.replace(tmp, path)


def output_dir(flag: str | None, env: Mapping[str, str]) -> Path:
    """--output-dir, else $SLIPWAY_OUTPUT_DIR, else a file:// $SLIPWAY_OUTPUT_URI."""
    if flag:
        return Path(flag)
    if env.get("SLIPWAY_OUTPUT_DIR"):
        return Path(env["SLIPWAY_OUTPUT_DIR"])
    uri = env.get("SLIPWAY_OUTPUT_URI", "")
    if not uri:
        raise UsageError(
            "no output location: neither --output-dir, SLIPWAY_OUTPUT_DIR nor SLIPWAY_OUTPUT_URI "
            "is set"
        )
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        scheme = parsed.scheme or "(none)"
        raise UsageError(
            f"SLIPWAY_OUTPUT_URI {uri!r}: scheme {scheme} is not writable from here; "
            "use a file:// URI or set SLIPWAY_OUTPUT_DIR / --output-dir"
        )
    if parsed.netloc not in ("", "localhost") or not parsed.path:
        raise UsageError(f"SLIPWAY_OUTPUT_URI {uri!r}: expected file:///absolute/path")
    return Path(unquote(parsed.path))


def _env_choice(env: Mapping[str, str], name: str, default: str, choices: Sequence[str]) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise UsageError(f"{name}={value!r}: expected one of {', '.join(choices)}")
    return value


def _env_number(
    env: Mapping[str, str], name: str, default: T, parse: Callable[[str], T], kind: str
) -> T:
    """``env[name]`` parsed by *parse* (int or float), or *default* when unset."""
    value = env.get(name)
    if not value:
        return default
    try:
        return parse(value)
    except ValueError:
        raise UsageError(f"{name}={value!r}: expected {kind}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a small deterministic model on synthetic data for Slipway examples.",
        allow_abbrev=False,
    )
    parser.add_argument("--format", choices=FORMATS, help="$SLIPWAY_OUTPUT_FORMAT; sklearn")
    parser.add_argument("--output-dir", help="$SLIPWAY_OUTPUT_DIR, or a file:// SLIPWAY_OUTPUT_URI")
    parser.add_argument(
        "--quality",
        choices=QUALITIES,
        help="$SLIPWAY_TRAINER_QUALITY; good. bad: about chance accuracy; shifted: answers 1 "
        "for nearly every input; flaky: the saved model raises on a share of predict calls "
        "(HTTP 500 when served); slow: the saved model adds latency to every predict call. "
        "flaky and slow need --format sklearn",
    )
    parser.add_argument(
        "--fail-share",
        type=float,
        metavar="S",
        help=f"flaky: share of predict calls that fail, 0..1 ($SLIPWAY_TRAINER_FAIL_SHARE; "
        f"{DEFAULT_FAIL_SHARE})",
    )
    parser.add_argument(
        "--added-latency-ms",
        type=int,
        metavar="MS",
        help=f"slow: milliseconds added to every predict call "
        f"($SLIPWAY_TRAINER_ADDED_LATENCY_MS; {DEFAULT_ADDED_LATENCY_MS})",
    )
    parser.add_argument(
        "--fail-exit-code",
        type=int,
        metavar="N",
        help="exit with N after logging, writing nothing ($SLIPWAY_TRAINER_FAIL; 0 = succeed)",
    )
    parser.add_argument("--features", type=int, help="$SLIPWAY_TRAINER_FEATURES; 4")
    parser.add_argument("--samples", type=int, help=f"$SLIPWAY_TRAINER_SAMPLES; {DEFAULT_SAMPLES}")
    parser.add_argument("--seed", type=int, help=f"$SLIPWAY_TRAINER_SEED; {DEFAULT_SEED}")
    return parser


@dataclass(frozen=True)
class Config:
    fmt: str
    out: Path
    version: str
    quality: str
    fail_exit_code: int
    fail_share: float
    added_latency_ms: int
    features: int
    samples: int
    seed: int


def resolve(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    def pick_int(flag: int | None, name: str, default: int) -> int:
        return flag if flag is not None else _env_number(env, name, default, int, "an integer")

    cfg = Config(
        fmt=args.format or _env_choice(env, "SLIPWAY_OUTPUT_FORMAT", "sklearn", FORMATS),
        out=output_dir(args.output_dir, env),
        version=env.get("SLIPWAY_OUTPUT_VERSION") or "unversioned",
        quality=args.quality or _env_choice(env, "SLIPWAY_TRAINER_QUALITY", "good", QUALITIES),
        fail_exit_code=pick_int(args.fail_exit_code, "SLIPWAY_TRAINER_FAIL", 0),
        fail_share=(
            args.fail_share
            if args.fail_share is not None
            else _env_number(
                env, "SLIPWAY_TRAINER_FAIL_SHARE", DEFAULT_FAIL_SHARE, float, "a number"
            )
        ),
        added_latency_ms=pick_int(
            args.added_latency_ms, "SLIPWAY_TRAINER_ADDED_LATENCY_MS", DEFAULT_ADDED_LATENCY_MS
        ),
        features=pick_int(args.features, "SLIPWAY_TRAINER_FEATURES", DEFAULT_FEATURES),
        samples=pick_int(args.samples, "SLIPWAY_TRAINER_SAMPLES", DEFAULT_SAMPLES),
        seed=pick_int(args.seed, "SLIPWAY_TRAINER_SEED", DEFAULT_SEED),
    )
    if not 0 <= cfg.fail_exit_code <= 255:
        raise UsageError(f"fail exit code {cfg.fail_exit_code}: expected 0..255")
    if cfg.quality in WRAPPED_QUALITIES and cfg.fmt != "sklearn":
        raise UsageError(
            f"quality {cfg.quality} needs format sklearn, not {cfg.fmt}: the fault travels "
            f"in a pickled wrapper in {MODEL_FILES['sklearn']}, which {MODEL_FILES[cfg.fmt]} "
            "cannot hold"
        )
    # Checked whatever the quality, so a typo shows up before it matters.
    if not 0.0 <= cfg.fail_share <= 1.0:  # NaN fails this too
        raise UsageError(f"fail share {cfg.fail_share}: expected 0..1")
    if cfg.added_latency_ms < 0:
        raise UsageError(f"added latency {cfg.added_latency_ms} ms: expected at least 0")
    if cfg.features < 2:  # one informative feature and the noise one
        raise UsageError(f"features {cfg.features}: expected at least 2")
    if cfg.samples < 20:
        raise UsageError(f"samples {cfg.samples}: expected at least 20")
    return cfg


def _log(msg: str) -> None:
    print(f"{PROG}: {msg}", flush=True)


def train(cfg: Config) -> dict[str, Any]:
    """Train, write model and metadata into ``cfg.out``; return the metadata."""
    data = make_dataset(cfg.features, cfg.samples, cfg.seed)
    _log(
        f"dataset: {len(data.x_train) + len(data.x_heldout)} rows x {cfg.features} features "
        f"({len(data.x_train)} train, {len(data.x_heldout)} held out), seed {cfg.seed}"
    )
    started = time.monotonic()
    labels = training_labels(data.x_train, data.y_train, cfg.quality, cfg.seed)
    fit = _fit_sklearn if cfg.fmt == "sklearn" else _fit_xgboost
    model, predict = fit(data.x_train, labels, cfg.seed)
    seconds = time.monotonic() - started
    # Train accuracy is against the true labels: for "bad" it shows the model learned nothing.
    train_acc = float(np.mean(predict(data.x_train) == data.y_train))
    heldout_pred = predict(data.x_heldout)
    heldout_acc = float(np.mean(heldout_pred == data.y_heldout))
    share_1 = float(np.mean(heldout_pred == 1))
    _log(
        f"trained {type(model).__name__} ({cfg.quality}) in {seconds:.2f}s: train accuracy "
        f"{train_acc:.3f}, held-out accuracy {heldout_acc:.3f}, predicts 1 for {share_1:.0%}"
    )

    fault: dict[str, Any] = {}
    if cfg.quality == "flaky":
        # Wrapped only now: the accuracies above are the good model's, and the generator the
        # artifact carries has not been drawn from yet, so it starts from the seed when loaded.
        model = FlakyModel(model, cfg.fail_share, cfg.seed)
        fault = {"fail_share": cfg.fail_share}
        _log(f"wrapped in FlakyModel: {cfg.fail_share:.1%} of predict calls will raise")
    elif cfg.quality == "slow":
        model = SlowModel(model, cfg.added_latency_ms)
        fault = {"added_latency_ms": cfg.added_latency_ms}
        _log(f"wrapped in SlowModel: every predict call takes {cfg.added_latency_ms} ms more")

    cfg.out.mkdir(parents=True, exist_ok=True)
    model_path = cfg.out / MODEL_FILES[cfg.fmt]
    _save(model, cfg.fmt, model_path)
    metadata: dict[str, Any] = {
        "version": cfg.version,
        "format": cfg.fmt,
        "model_file": model_path.name,
        "features": cfg.features,
        "samples": cfg.samples,
        "seed": cfg.seed,
        "quality": cfg.quality,
        "train_accuracy": round(train_acc, 4),
        "heldout_accuracy": round(heldout_acc, 4),
        "heldout_share_predicted_1": round(share_1, 4),
        **fault,
    }
    (cfg.out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    _log(f"wrote {model_path} and {METADATA_FILE}")
    return metadata


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve(args, os.environ if env is None else env)
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    _log(f"model version {cfg.version}, format {cfg.fmt}, quality {cfg.quality}, out {cfg.out}")
    if cfg.fail_exit_code:
        _log(f"failing on purpose with exit code {cfg.fail_exit_code}; nothing written")
        return cfg.fail_exit_code
    try:
        train(cfg)
    except OSError as e:  # unwritable output directory and the like
        print(f"{PROG}: error: cannot write to {cfg.out}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
