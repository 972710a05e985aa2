from __future__ import annotations

import pickle

from prometheus_client.parser import text_string_to_metric_families

from astr_ray.metrics import Metrics, render, sample_value


def test_snapshots_from_two_actors_merge_with_an_actor_label() -> None:
    a, b = Metrics(), Metrics()
    a.messages.labels("webchat", "in").inc(3)
    b.messages.labels("webchat", "in").inc(2)
    a.turn_seconds.labels("ok").observe(0.02)
    b.llm_seconds.labels("p1").observe(0.7)
    snaps = {"host-a": pickle.loads(pickle.dumps(a.snapshot())), "host-b": b.snapshot()}
    text = render(snaps).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    msgs = [s for s in families["astr_ray_messages"].samples if s.name.endswith("_total")]
    assert {(s.labels["actor"], s.value) for s in msgs} == {("host-a", 3.0), ("host-b", 2.0)}
    assert sample_value(snaps["host-b"], "astr_ray_llm_seconds_count", provider="p1") == 1
    assert families["astr_ray_turn_seconds"].type == "histogram"
