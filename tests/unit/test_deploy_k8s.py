"""deploy/k8s: every manifest valid against the Kubernetes schemas; the sharded drill's
Indexed Job (one pod per shard, the index as I); the replicator's Deployment."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from replicator.cli import replicator as replicator_group
from replicator.runtime._http import parse_listen

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


# -- every manifest against the Kubernetes schemas; the replicator's Deployment -------------------

K8S = MANIFEST.parent
KUBERNETES_VERSION = "1.30"


def _all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_every_manifest_is_valid_for_its_schema(path: Path) -> None:
    """kubernetes-validate: the API's OpenAPI schemas (shipped in the package, offline), strict:
    an unknown or misspelt field is an error too."""
    for document in _all(path):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_can_fail() -> None:
    deployment = next(d for d in _all(K8S / "replicator.yaml") if d["kind"] == "Deployment")
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


def _replicator() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """The Deployment, its pod spec, and every document of replicator.yaml."""
    documents = _all(K8S / "replicator.yaml")
    [deployment] = [d for d in documents if d["kind"] == "Deployment"]
    return deployment, deployment["spec"]["template"]["spec"], documents


def test_one_replicator_at_a_time_with_its_journal_on_a_volume() -> None:
    deployment, pod, documents = _replicator()
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    [container] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes["journal"]["persistentVolumeClaim"]["claimName"]
    claims = {d["metadata"]["name"] for d in documents if d["kind"] == "PersistentVolumeClaim"}
    assert claim in claims
    journal = next(a for a in container["args"] if a.startswith("--journal="))
    assert journal.removeprefix("--journal=").startswith(mounts["journal"] + "/")


def test_the_probes_and_scrape_annotations_are_the_services_endpoints() -> None:
    deployment, pod, _ = _replicator()
    [container] = pod["containers"]
    listen = next(a for a in container["args"] if a.startswith("--listen="))
    host, port = parse_listen(listen.removeprefix("--listen=")) or ("", 0)
    assert host == "0.0.0.0"  # the kubelet and Prometheus reach the pod's address
    [named] = [p for p in container["ports"] if p["name"] == "metrics"]
    assert named["containerPort"] == port
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert container["resources"]["requests"]["cpu"]
    assert container["resources"]["limits"]["memory"]


def test_the_pod_runs_replicator_run_with_options_and_variables_it_has() -> None:
    _, pod, documents = _replicator()
    [container] = pod["containers"]
    assert container["args"][:2] == ["replicator", "run"]
    command = replicator_group.commands["run"]
    known = {o for p in command.params for o in p.opts}
    given = {a.split("=", 1)[0] for a in container["args"][2:]}
    assert given <= known, given - known
    envvars = {p.envvar for p in command.params if isinstance(p.envvar, str)}
    [config] = [d for d in documents if d["kind"] == "ConfigMap"]
    assert set(config["data"]) <= envvars, set(config["data"]) - envvars
    # Every option the command requires is given one way or the other.
    for param in command.params:
        if param.required:
            assert set(param.opts) & given or param.envvar in config["data"], param.opts


def test_the_pod_is_locked_down() -> None:
    _, pod, _ = _replicator()
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the image's user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
