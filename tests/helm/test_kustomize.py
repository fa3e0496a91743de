"""The one-step sidecar: deploy/kustomize/sidecar, a Kustomize component whose strategic-merge
patch adds the hardened gateway to a Deployment nobody templates.

The patch is applied here as Kustomize applies it (a strategic merge: maps merge, lists of
named items such as containers, initContainers, volumes and env merge by name) to the sample
Deployment of deploy/kustomize/example; the result must validate for Kubernetes 1.29 and the
newest, and carry exactly the sidecar that the chart's sidecar templates render, so the two
cannot drift.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.charts import K8S_VERSIONS, REPO, gateway_container, one, render, validate

KUSTOMIZE = REPO / "deploy" / "kustomize"
COMPONENT = KUSTOMIZE / "sidecar"
EXAMPLE = KUSTOMIZE / "example"
# The settings the chart would pass as literal values come from the ConfigMap instead.
CHART_MANAGED = {
    "EXACT_GATEWAY_HOST",
    "EXACT_GATEWAY_PORT",
    "EXACT_GATEWAY_ADMIN_HOST",
    "EXACT_GATEWAY_ADMIN_PORT",
    "EXACT_GATEWAY_CLIENT_SECRET_FILE",
}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def strategic_merge(base: Any, patch: Any) -> Any:
    """The part of Kubernetes' strategic merge patch these manifests use: maps merge key by
    key; lists whose items all carry a ``name`` (its patchMergeKey for containers, volumes,
    env, volumeMounts) merge by name; any other list or value is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else value
        return merged
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(item, dict) and "name" in item for item in [*base, *patch]):
        by_name = {item["name"]: item for item in base}
        result = [copy.deepcopy(item) for item in base]
        for item in patch:
            if item["name"] in by_name:
                index = [existing["name"] for existing in result].index(item["name"])
                result[index] = strategic_merge(result[index], item)
            else:
                result.append(item)
        return result
    return copy.deepcopy(patch)


def patched() -> dict[str, Any]:
    """The example's Deployment with the component applied, as `kubectl kustomize` builds it
    (the ConfigMap's name without kustomize's content hash suffix)."""
    kustomization = load(EXAMPLE / "kustomization.yaml")
    assert kustomization["components"] == ["../sidecar"]
    (resource,) = kustomization["resources"]
    component = load(COMPONENT / "kustomization.yaml")
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert component["kind"] == "Component"
    (patch_ref,) = component["patches"]
    assert patch_ref["target"] == {"group": "apps", "version": "v1", "kind": "Deployment"}
    deployment = load(EXAMPLE / resource)
    patch = load(COMPONENT / patch_ref["path"])
    assert (patch["apiVersion"], patch["kind"]) == ("apps/v1", "Deployment")
    patch = {key: value for key, value in patch.items() if key != "metadata"}
    merged: dict[str, Any] = strategic_merge(deployment, patch)
    return merged


def test_strategic_merge_keeps_the_app_and_adds_by_name() -> None:
    """The helper merges named lists and keeps what the patch does not name."""
    base = {"a": [{"name": "x", "v": 1}], "b": [1, 2], "c": {"d": 1}}
    patch = {"a": [{"name": "x", "w": 2}, {"name": "y"}], "b": [3], "c": {"e": 2}}
    assert strategic_merge(base, patch) == {
        "a": [{"name": "x", "v": 1, "w": 2}, {"name": "y"}],
        "b": [3],
        "c": {"d": 1, "e": 2},
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_patched_deployment_validates(version: str) -> None:
    """The sample Deployment with the sidecar is valid for Kubernetes 1.29 and the newest."""
    validate(patched(), version)
    validate(load(EXAMPLE / "deployment.yaml"), version)


def test_patched_deployment_carries_the_hardened_sidecar() -> None:
    """A native sidecar (restartPolicy Always) on loopback, non-root, read-only root, no
    capabilities, probes on the admin port, the secret as a read-only file; the app untouched."""
    spec = patched()["spec"]["template"]["spec"]
    (app,) = spec["containers"]
    assert app == load(EXAMPLE / "deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    (sidecar,) = spec["initContainers"]
    assert sidecar["name"] == "exact-gateway"
    assert sidecar["restartPolicy"] == "Always"
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    variables = {e["name"]: e["value"] for e in sidecar["env"]}
    assert variables["EXACT_GATEWAY_HOST"] == "127.0.0.1"
    assert variables["EXACT_GATEWAY_CLIENT_SECRET_FILE"] == (
        "/var/run/secrets/exact-gateway/client-secret"
    )
    assert "EXACT_GATEWAY_CLIENT_SECRET" not in variables
    assert sidecar["envFrom"] == [{"configMapRef": {"name": "exact-gateway-settings"}}]
    assert sidecar["volumeMounts"] == [
        {
            "name": "exact-gateway-secret",
            "mountPath": "/var/run/secrets/exact-gateway",
            "readOnly": True,
        }
    ]
    assert [v["name"] for v in spec["volumes"]] == ["cache", "exact-gateway-secret"]
    assert spec["volumes"][1]["secret"]["secretName"] == "exact-gateway-credentials"
    settings = load(EXAMPLE / "kustomization.yaml")["configMapGenerator"][0]
    assert settings["name"] == "exact-gateway-settings"
    assert "EXACT_GATEWAY_ENVIRONMENT=qa" in settings["literals"], "environment is required"


def test_component_sidecar_is_the_chart_sidecar(example_chart: Path) -> None:
    """Field for field, the patch's container and volume are what the chart's sidecar
    templates render for the same secret, except that the settings come from a ConfigMap
    (envFrom) instead of literal values."""
    values = {
        "gateway": {
            "settings": {"environment": "qa", "clientId": "c", "scopes": "practice.get"},
            "secret": {"existingSecret": "exact-gateway-credentials"},
        }
    }
    manifests = render(values, chart=example_chart, name="exact-gateway")
    chart_spec = one(manifests, "Deployment")["spec"]["template"]["spec"]
    chart_sidecar = gateway_container(chart_spec)
    spec = patched()["spec"]["template"]["spec"]
    (sidecar,) = spec["initContainers"]
    chart_env = [e for e in chart_sidecar["env"] if e["name"] in CHART_MANAGED]
    assert sidecar["env"] == chart_env
    assert {key: value for key, value in sidecar.items() if key not in {"env", "envFrom"}} == {
        key: value for key, value in chart_sidecar.items() if key != "env"
    }
    assert spec["volumes"][1] == chart_spec["volumes"][0]
    chart_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    labels = patched()["spec"]["template"]["metadata"]["labels"]
    assert labels["exact-gateway-sidecar"] == chart_labels["exact-gateway-sidecar"]
