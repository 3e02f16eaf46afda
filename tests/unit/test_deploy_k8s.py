"""The Kubernetes Indexed Job that runs a sharded drill: one pod per shard, the index as I."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "fleet-shards.yaml"


def _documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def test_the_job_is_indexed_and_runs_every_shard_at_once() -> None:
    jobs = [d for d in _documents() if d["kind"] == "Job"]
    assert len(jobs) == 1
    spec = jobs[0]["spec"]
    assert spec["completionMode"] == "Indexed"
    container = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    shards = int(env["SHARDS"])
    assert spec["completions"] == spec["parallelism"] == shards
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    command = " ".join(container["args"])
    assert '--shard "${JOB_COMPLETION_INDEX}/${SHARDS}"' in command
    assert '--start-at "${START_AT}"' in command
    assert "shard-${JOB_COMPLETION_INDEX}" in command  # one report folder per shard


def test_every_volume_the_pod_mounts_is_defined() -> None:
    job = next(d for d in _documents() if d["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    mounted = {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert mounted <= {v["name"] for v in pod["volumes"]}
    config_maps = {d["metadata"]["name"] for d in _documents() if d["kind"] == "ConfigMap"}
    used = {v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert used <= config_maps
