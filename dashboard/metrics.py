"""The few series the metrics page charts, from the tree's metric snapshots.

    Supervisor.metrics() ─► {actor: Snapshot} ─► summarize ─► one point per series

Counters become rates (per second since the previous sample); the turn latency
quantiles come from the histogram buckets' increase since the previous sample, so each
point says how the last interval went, not the whole run.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SERIES", "summarize"]

SERIES = (
    "messages_in_per_s",
    "messages_out_per_s",
    "turn_p50_ms",
    "turn_p99_ms",
    "errors_per_s",
    "active_sessions",
    "mailbox_depth",
)


def _samples(snapshots: dict[str, Any]) -> list[tuple[str, dict[str, str], float]]:
    out: list[tuple[str, dict[str, str], float]] = []
    for families in snapshots.values():
        for family in families:
            out.extend(family.samples)
    return out


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile from cumulative (upper bound, count) pairs, interpolated
    inside the bucket that holds it; None without observations."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            frac = (rank - below) / inside if inside > 0 else 1.0
            return lower + (bound - lower) * frac
        lower, below = bound, count
    return lower


def summarize(
    snapshots: dict[str, Any], last: dict[str, float], interval_s: float
) -> tuple[dict[str, float], dict[str, float]]:
    """(this sample's points, the running totals to pass next time)."""
    totals: dict[str, float] = {}
    gauges = {"active_sessions": 0.0, "mailbox_depth": 0.0}
    for name, labels, value in _samples(snapshots):
        if name == "astr_ray_messages_total":
            key = "in" if labels.get("direction") == "in" else "out"
            totals[key] = totals.get(key, 0.0) + value
        elif name == "astr_ray_errors_total":
            totals["errors"] = totals.get("errors", 0.0) + value
        elif name == "astr_ray_turn_seconds_bucket":
            key = f"le:{labels.get('le')}"
            totals[key] = totals.get(key, 0.0) + value
        elif name == "astr_ray_active_sessions":
            gauges["active_sessions"] += value
        elif name == "astr_ray_mailbox_depth":
            gauges["mailbox_depth"] += value

    def rate(key: str) -> float:
        if not last:  # the first sample: no interval to measure yet
            return 0.0
        return max(0.0, totals.get(key, 0.0) - last.get(key, 0.0)) / interval_s

    points = {
        "messages_in_per_s": rate("in"),
        "messages_out_per_s": rate("out"),
        "errors_per_s": rate("errors"),
        **gauges,
    }
    buckets = sorted(
        (float(k[3:]), totals[k] - last.get(k, 0.0)) for k in totals if k.startswith("le:")
    )
    if last:
        for q, name in ((0.5, "turn_p50_ms"), (0.99, "turn_p99_ms")):
            seconds = _quantile(buckets, q)
            if seconds is not None:
                points[name] = round(seconds * 1000, 1)
    return points, totals
