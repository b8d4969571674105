"""Population stability index from Prometheus cumulative histograms."""

from __future__ import annotations

import math

import pytest

from slipway.canary.psi import EPSILON, bucket_counts, psi


def cumulative(counts: list[float], edges: tuple[str, ...] = ("1", "2", "+Inf")
               ) -> dict[str, float]:
    out, running = {}, 0.0
    for edge, count in zip(edges, counts, strict=True):
        running += count
        out[edge] = running
    return out


def test_bucket_counts_difference_the_cumulative_buckets_in_le_order() -> None:
    # Unordered keys and a non-canonical le spelling, as Prometheus may return them.
    assert bucket_counts({"+Inf": 100, "0.5": 10, "1.0": 60}) == [10, 50, 40]


def test_bucket_counts_clamp_extrapolation_noise_to_zero() -> None:
    assert bucket_counts({"1": 10.2, "2": 10.0, "+Inf": 12}) == [10.2, 0, pytest.approx(1.8)]


def test_identical_distributions_have_zero_psi() -> None:
    assert psi(cumulative([50, 30, 20]), cumulative([50, 30, 20])) == 0


def test_scale_does_not_matter_only_shares_do() -> None:
    assert psi(cumulative([5, 3, 2]), cumulative([500, 300, 200])) == pytest.approx(0)


def test_hand_computed_example() -> None:
    # p = (.5, .3, .2), q = (.4, .4, .2): .1 ln(1.25) + (-.1) ln(.75) + 0 = 0.0510826
    value = psi(cumulative([50, 30, 20]), cumulative([40, 40, 20]))
    assert value == pytest.approx(0.1 * math.log(1.25) - 0.1 * math.log(0.75))
    assert value == pytest.approx(0.0510826, abs=1e-7)


def test_symmetric() -> None:
    a, b = cumulative([70, 20, 10]), cumulative([30, 30, 40])
    assert psi(a, b) == pytest.approx(psi(b, a))


def test_shifted_distribution_is_a_major_shift() -> None:
    edges = ("0.2", "0.4", "0.6", "0.8", "+Inf")
    stable = cumulative([10, 20, 40, 20, 10], edges)
    canary = cumulative([0, 10, 20, 40, 30], edges)  # one bucket to the right
    value = psi(canary, stable)
    assert value is not None and value > 0.25


def test_empty_bucket_on_one_side_uses_epsilon() -> None:
    value = psi(cumulative([100, 0, 0]), cumulative([90, 10, 0]))
    # the third bucket is empty on both sides and adds nothing
    expected = (1 - 0.9) * math.log(1 / 0.9) + (EPSILON - 0.1) * math.log(EPSILON / 0.1)
    assert value == pytest.approx(expected)


def test_tiny_sample_is_noisy_which_is_why_min_samples_gates_it() -> None:
    # Three predictions drawn from the stable distribution still read as a major shift.
    stable = cumulative([500, 300, 200])
    assert (psi(cumulative([2, 1, 0]), stable) or 0) > 0.25
    assert (psi(cumulative([1, 0, 0]), stable) or 0) > 0.25


def test_zero_totals_are_no_data() -> None:
    assert psi(cumulative([0, 0, 0]), cumulative([1, 2, 3])) is None
    assert psi(cumulative([1, 2, 3]), cumulative([0, 0, 0])) is None


def test_mismatched_edges_raise() -> None:
    with pytest.raises(ValueError, match="different buckets"):
        psi(cumulative([1, 2, 3]), cumulative([1, 2, 3], ("0.5", "2", "+Inf")))
    with pytest.raises(ValueError, match="different buckets"):
        psi({"1": 1, "+Inf": 2}, cumulative([1, 2, 3]))


def test_equivalent_le_spellings_match() -> None:
    assert psi({"1.0": 5, "+Inf": 10}, {"1": 5, "+Inf": 10}) == 0
