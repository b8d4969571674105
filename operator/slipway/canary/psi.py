"""Population stability index between the canary's and the stable version's predictions (pure).

Input: Prometheus cumulative histograms, `le` -> count (as `sum by (le) (increase(...))`
returns them), for the same bucket edges. PSI = sum over buckets of (p - q) * ln(p / q), with
p the canary's and q the stable version's share of the bucket. Rules of thumb: < 0.1 no shift,
0.1-0.25 moderate, > 0.25 major.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# The share given to an empty bucket, so that ln(p / q) stays finite. 1e-4 (0.01%) keeps a
# bucket that is empty on one side and holds 10% of the other at about 0.1 * ln(1000) = 0.69,
# well above the 0.25 "major shift" line, while two empty buckets contribute 0.
EPSILON = 1e-4


def bucket_counts(cumulative: Mapping[str, float]) -> list[float]:
    """Per-bucket counts in ascending `le` order. Negative differences are clamped to 0: they
    come from increase()'s extrapolation, not from real observations."""
    ordered = sorted(cumulative.items(), key=lambda item: float(item[0]))
    counts: list[float] = []
    previous = 0.0
    for _, value in ordered:
        counts.append(max(value - previous, 0.0))
        previous = max(value, previous)
    return counts


def _edges(cumulative: Mapping[str, float]) -> list[float]:
    return sorted(float(le) for le in cumulative)


def psi(canary: Mapping[str, float], stable: Mapping[str, float],
        epsilon: float = EPSILON) -> float | None:
    """The PSI of *canary* against *stable*, or None when either has no observations (no
    data: the interval says nothing). Different bucket edges raise ValueError: the two
    versions export incomparable histograms, a configuration error that waiting won't fix."""
    if _edges(canary) != _edges(stable):
        raise ValueError(f"prediction histograms have different buckets: canary "
                         f"{sorted(canary, key=float)}, stable {sorted(stable, key=float)}")
    p_counts, q_counts = bucket_counts(canary), bucket_counts(stable)
    p_total, q_total = sum(p_counts), sum(q_counts)
    if p_total <= 0 or q_total <= 0:
        return None
    total = 0.0
    for p_count, q_count in zip(p_counts, q_counts, strict=True):
        p = max(p_count / p_total, epsilon)
        q = max(q_count / q_total, epsilon)
        total += (p - q) * math.log(p / q)
    return total
