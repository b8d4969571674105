"""Model wrappers that misbehave on purpose, for canary tests.

What differs between two model versions in production is the artifact, so the misbehaviour
travels inside it: the example trainer (``--quality flaky|slow``) wraps the fitted scikit-learn
estimator in one of these classes and pickles the wrapper into ``model.joblib``. The scikit-learn
server loads it like any estimator (it only needs ``predict``); unpickling needs this module,
which ships in the same package as the server.

- :class:`FlakyModel` raises :class:`InjectedFault` on a share of calls. The server answers such a
  call with HTTP 500 (an exception other than ``ValueError`` becomes kserve's ``InferenceError``).
- :class:`SlowModel` sleeps before every call; its answers are the wrapped model's.

Both expose ``predict`` and ``predict_proba`` like a scikit-learn classifier and are picklable.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np


class InjectedFault(RuntimeError):
    """The failure a :class:`FlakyModel` raises on purpose.

    Deliberately not a ``ValueError``: the servers answer ``ValueError`` with 400 (bad input),
    while an injected fault must look like a broken model, i.e. a 500.
    """


class _Wrapper:
    """Answers as the wrapped estimator, after `_before(method)` on every predict call."""

    model: Any

    def _before(self, method: str) -> None:
        raise NotImplementedError

    def predict(self, x: Any) -> Any:
        self._before("predict")
        return self.model.predict(x)

    def predict_proba(self, x: Any) -> Any:
        self._before("predict_proba")
        return self.model.predict_proba(x)

    @property
    def classes_(self) -> Any:
        """The wrapped estimator's classes (AttributeError, like it, when it has none)."""
        return self.model.classes_

    @property
    def n_features_in_(self) -> Any:
        return self.model.n_features_in_


class FlakyModel(_Wrapper):
    """Raise :class:`InjectedFault` on ``fail_share`` (0..1) of predict calls.

    Each call draws once from a ``numpy`` generator seeded with ``seed``, so a given artifact
    fails on the same call numbers every time it is loaded (replicas loading the same file
    fail in step). The generator's state is pickled with the wrapper; save the wrapper before
    calling it if the saved artifact should start from the seed.
    """

    def __init__(self, model: Any, fail_share: float, seed: int = 0) -> None:
        share = float(fail_share)
        if not 0.0 <= share <= 1.0:  # NaN fails this too
            raise ValueError(f"fail_share {fail_share!r}: expected a number in 0..1")
        self.model = model
        self.fail_share = share
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def _before(self, method: str) -> None:
        # One draw per call, whatever the number of rows: a request fails as a whole.
        if self._rng.random() < self.fail_share:
            raise InjectedFault(
                f"injected fault: this model version fails {self.fail_share:.1%} of "
                f"{method}() calls"
            )

    def __repr__(self) -> str:
        return f"FlakyModel({self.model!r}, fail_share={self.fail_share}, seed={self.seed})"


class SlowModel(_Wrapper):
    """Sleep ``added_latency_ms`` before every predict call, then answer as the wrapped model.

    The sleep blocks the calling thread. kserve calls a synchronous ``predict`` on its event
    loop, so while one call sleeps the server answers nothing else (health checks and
    ``/metrics`` included): concurrent requests queue up, as they would behind a slow
    CPU-bound model.
    """

    def __init__(self, model: Any, added_latency_ms: float) -> None:
        latency = float(added_latency_ms)
        if not (math.isfinite(latency) and latency >= 0):
            raise ValueError(f"added_latency_ms {added_latency_ms!r}: expected a number >= 0")
        self.model = model
        self.added_latency_ms = latency

    def _before(self, method: str) -> None:
        time.sleep(self.added_latency_ms / 1000.0)

    def __repr__(self) -> str:
        return f"SlowModel({self.model!r}, added_latency_ms={self.added_latency_ms})"
