"""Medians, percentiles and number formatting for the report."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def median(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else math.nan


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def percentiles(values: Sequence[float], ps: Sequence[float] = (50, 95, 99)) -> dict[float, float]:
    return {p: percentile(values, p) for p in ps}


def ratio(ours: float, peer: float) -> float:
    if not peer or math.isnan(peer) or math.isnan(ours):
        return math.nan
    return ours / peer


def fmt(value: float | None, digits: int = 0) -> str:
    """Thousands-separated number, or an em dash for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}×"


def spread(values: Sequence[float]) -> str:
    """``min–max`` of the rounds, to show how noisy a median is."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if len(vals) < 2:
        return ""
    return f"{min(vals):,.0f}–{max(vals):,.0f}"
