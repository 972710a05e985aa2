"""Metrics: one prometheus-client registry per process, gathered across actors.

Every actor records into its own ``Metrics`` (a private ``CollectorRegistry``).
``snapshot()`` turns the registry into plain data that crosses process boundaries;
the web app's ``/metrics`` merges the snapshots of every actor (each sample labelled
with its ``actor``) and renders them in the Prometheus text format (``render``)::

    SessionHost ─snapshot()─┐
    WebChatAdapter ─────────┼─► Supervisor.metrics() ─► /metrics (merged, actor label)
    Supervisor ─────────────┘

The same figures are mirrored into Ray's own metrics by the actor shells, so they also
appear on Ray's dashboard.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

__all__ = ["Metrics", "Snapshot", "render"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


@dataclass(frozen=True)
class Family:
    name: str
    documentation: str
    type: str
    samples: tuple[tuple[str, dict[str, str], float], ...]


Snapshot = list[Family]


class Metrics:
    """The metric families of astr-ray. Labelled families appear once used; the
    session gauges are exported only by session hosts (``host=True``)."""

    def __init__(self, *, host: bool = False) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        gauges = r if host else None  # elsewhere they exist but are not exported
        self.messages = Counter(
            "astr_ray_messages",
            "Messages in and out, per platform",
            ["platform", "direction"],
            registry=r,
        )
        self.turn_seconds = Histogram(
            "astr_ray_turn_seconds",
            "Time from a message entering its mailbox to its reply",
            ["outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.llm_seconds = Histogram(
            "astr_ray_llm_seconds",
            "LLM call latency, per provider",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.llm_tokens = Counter(
            "astr_ray_llm_tokens",
            "LLM tokens, per provider and kind",
            ["provider", "kind"],
            registry=r,
        )
        self.llm_errors = Counter(
            "astr_ray_llm_errors", "Failed LLM calls, per provider", ["provider"], registry=r
        )
        self.active_sessions = Gauge(
            "astr_ray_active_sessions", "Sessions live in this host's memory", registry=gauges
        )
        self.mailbox_depth = Gauge(
            "astr_ray_mailbox_depth",
            "Messages waiting in this host's mailboxes",
            registry=gauges,
        )
        self.restarts = Counter(
            "astr_ray_actor_restarts",
            "Actor restarts seen by the supervisor",
            ["child", "kind"],
            registry=r,
        )
        self.plugin_calls = Counter(
            "astr_ray_plugin_calls",
            "Plugin handler and tool calls, per plugin, kind and outcome",
            ["plugin", "kind", "outcome"],
            registry=r,
        )
        self.plugin_seconds = Histogram(
            "astr_ray_plugin_seconds",
            "Plugin handler and tool latency, per plugin",
            ["plugin"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "astr_ray_errors", "Errors by component and kind", ["component", "kind"], registry=r
        )

    def snapshot(self) -> Snapshot:
        """The registry as plain, picklable data."""
        return [
            Family(
                m.name,
                m.documentation,
                m.type,
                tuple((s.name, dict(s.labels), s.value) for s in m.samples),
            )
            for m in self.registry.collect()
        ]


class _Merged:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def render(snapshots: dict[str, Snapshot]) -> bytes:
    """Merge snapshots (actor name → snapshot) into one exposition, labelling samples
    with ``actor``. Families of the same name from different actors become one."""
    merged: dict[str, Metric] = {}
    for actor, snap in sorted(snapshots.items()):
        for fam in snap:
            metric = merged.get(fam.name)
            if metric is None:
                metric = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            for sample_name, labels, value in fam.samples:
                metric.add_sample(sample_name, {**labels, "actor": actor}, value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(merged.values()))
    return generate_latest(registry)


def flatten(snapshot: Snapshot) -> Iterator[tuple[str, dict[str, str], float]]:
    """Every sample of a snapshot (for mirroring into other metric systems)."""
    for fam in snapshot:
        yield from fam.samples


def sample_value(snapshot: Snapshot, name: str, **labels: Any) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = {k: str(v) for k, v in labels.items()}
    return sum(
        v
        for n, lab, v in flatten(snapshot)
        if n == name and all(lab.get(k) == x for k, x in want.items())
    )
