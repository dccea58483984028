"""How much a measurement varied over its runs, and when that is too much to trust a comparison.

A run is one pass over the prompt set (in a comparison, a round: one pass of each side). Each rate
and ratio is reported as the median run's, with the lowest and highest run beside it.

``LARGE_SPREAD_PCT``: the comparisons this tool reports are read to about ten percent (is sdar_rt
1.2x or 1.3x its peer?); when the runs of one measurement differ by more than that, the difference
between two systems may be the host's load rather than the systems (other work on the machine, a
CPU changing clock, runs too short to average it out), so the report says so.
"""

from __future__ import annotations

import statistics

LARGE_SPREAD_PCT = 10


def spread(values: list[float]) -> dict:
    """min / median / max of per-run values and the spread as a whole percentage of the median
    (rounded once, here: what is shown is what is judged); ``relative_pct`` is None for one run."""
    vals = [float(v) for v in values]
    if not vals:
        return {"values": [], "min": None, "median": None, "max": None, "relative_pct": None}
    med = statistics.median(vals)
    rel = round(100.0 * (max(vals) - min(vals)) / med) if len(vals) > 1 and med > 0 else None
    return {"values": vals, "min": min(vals), "median": med, "max": max(vals), "relative_pct": rel}


def is_large(s: dict) -> bool:
    return s.get("relative_pct") is not None and s["relative_pct"] > LARGE_SPREAD_PCT


def large_spread_warning(what: str, s: dict, fmt: str = ".2f") -> str | None:
    """One line for the user when ``s`` (a ``spread``) is larger than ``LARGE_SPREAD_PCT``."""
    if not is_large(s):
        return None
    return (
        f"{what} varied from {format(s['min'], fmt)} to {format(s['max'], fmt)} between runs "
        f"({s['relative_pct']}% of the median {format(s['median'], fmt)}; above {LARGE_SPREAD_PCT}% the "
        "host's load can outweigh the differences measured): rerun on a quiet machine or with more --runs"
    )


def show(value: float | None, s: dict | None, fmt: str = ".1f") -> str:
    """``value (min-max)`` for a table cell; just the value for one run."""
    if value is None:
        return "-"
    if not s or s.get("relative_pct") is None:
        return format(value, fmt)
    return f"{format(value, fmt)} ({format(s['min'], fmt)}-{format(s['max'], fmt)})"
