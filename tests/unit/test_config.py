"""The operator's settings from its environment (pure: no I/O beyond the given mapping)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from slipway.config import Settings


def test_periods_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPWAY_RESYNC_SECONDS", "7.5")
    monkeypatch.setenv("SLIPWAY_POD_REASON_SECONDS", "20")
    s = Settings.from_env()
    assert (s.resync_seconds, s.pod_reason_seconds) == (7.5, 20.0)
    monkeypatch.delenv("SLIPWAY_POD_REASON_SECONDS")
    assert Settings.from_env().pod_reason_seconds == 60.0


@pytest.mark.parametrize("var", ["SLIPWAY_RESYNC_SECONDS", "SLIPWAY_POD_REASON_SECONDS"])
@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_period_of_zero_or_less_is_refused_at_start(monkeypatch: pytest.MonkeyPatch,
                                                       var: str, value: str) -> None:
    """Zero would re-check (or re-read pods) on every event: a hot loop. The operator stops
    at start with the setting named instead."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ValidationError) as err:
        Settings.from_env()
    field = var.removeprefix("SLIPWAY_").lower()
    assert field in str(err.value) and "greater than 0" in str(err.value)
