"""cluster.yaml is checked offline with Ray's own config schema (`ray up` has no dry run)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parent.parent / "cluster.yaml"


def _load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return data


def test_cluster_yaml_passes_rays_schema() -> None:
    config = _load()
    validate_config(prepare_config(copy.deepcopy(config)))
    starts = " ".join(config["head_start_ray_commands"])
    assert "--port=6380" in starts, "never Ray's default port 6379 (Redis)"
    assert "astr-ray" in starts and " run " in starts
    types = config["available_node_types"]
    marked = {r for t in types.values() for r in t.get("resources", {})}
    assert {"control", "adapters", "session_hosts", "cpu_pool"} <= marked


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.update({"max_wrokers": 3}),  # a typo
        lambda c: c["available_node_types"]["session"].update({"min_workers": "one"}),
        lambda c: c.update({"head_node_type": "nope"}),
    ],
)
def test_a_broken_copy_fails(break_it: Any) -> None:
    config = _load()
    break_it(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validate_config(prepare_config(config))
