"""Sidecar mode: helm/examples/sidecar-demo, a plain app Deployment with the gateway added by
the chart README's snippet, rendered through a real `helm dependency update`.

Done means the pod is valid for Kubernetes 1.29+ and the app container reaches the gateway on
127.0.0.1:8480, where the gateway (and nothing else in the pod) listens.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from gateway.settings import ENV_PREFIX, Settings
from tests.helm.charts import (
    CHART,
    CRD_KINDS,
    EXAMPLE,
    K8S_VERSIONS,
    Manifest,
    env,
    gateway_container,
    kinds,
    lint_findings,
    one,
    pod_spec,
    render,
    validate,
)

SIDECAR_SETS: dict[str, dict[str, Any]] = {
    "native-sandbox": {},
    "native-qa-created-secret": {
        "gateway": {
            "settings": {"environment": "qa", "clientId": "partner", "scopes": "practice.get"},
            "secret": {"clientSecret": "sidecar-test-secret"},
            "podMonitor": {"enabled": True},
        }
    },
    "native-corporate": {
        "gateway": {
            "settings": {"environment": "qa", "clientId": "partner", "scopes": "practice.get"},
            "secret": {"existingSecret": "exact-credentials"},
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
            "envFrom": [{"secretRef": {"name": "exact-gateway-extra"}}],
            "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
            "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            "caBundle": {"secret": "corporate-ca"},
            "egressProxy": {"url": "http://[fd00::1]:3128"},
            "tracing": {"enabled": True, "samplerRatio": 0.5},
        }
    },
    "regular-container-existing-secret": {
        "gateway": {
            "sidecar": {"native": False, "readinessProbe": True},
            "settings": {"environment": "production", "clientId": "p", "scopes": ["a.get"]},
            "secret": {"existingSecret": "exact-credentials"},
        }
    },
}


def _render(chart: Path, name: str) -> list[Manifest]:
    return render(SIDECAR_SETS[name], chart=chart, name="shop")


@pytest.mark.parametrize("name", sorted(SIDECAR_SETS))
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_example_pod_is_valid(example_chart: Path, name: str, version: str) -> None:
    """Every manifest of the example validates (CRDs: only the PodMonitor, checked by hand)."""
    for manifest in _render(example_chart, name):
        if manifest["kind"] in CRD_KINDS:
            assert manifest["kind"] == "PodMonitor"
            assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
        else:
            validate(manifest, version)


@pytest.mark.parametrize("name", sorted(SIDECAR_SETS))
def test_example_lints_clean(example_chart: Path, name: str) -> None:
    """helm lint --strict of the host chart, with the dependency, finds nothing."""
    assert lint_findings(SIDECAR_SETS[name], chart=example_chart) == []


def test_app_reaches_the_native_sidecar_on_loopback(example_chart: Path) -> None:
    """Native sidecar: an init container that restarts Always, listening on 127.0.0.1:8480."""
    manifests = _render(example_chart, "native-sandbox")
    assert kinds(manifests) == ["Deployment"]
    spec = pod_spec(manifests)
    (sidecar,) = spec["initContainers"]
    (app,) = spec["containers"]
    assert sidecar["name"] == "exact-gateway"
    assert sidecar["restartPolicy"] == "Always"
    assert env(app) == {"EXACT_API_URL": "http://127.0.0.1:8480"}
    variables = env(sidecar)
    assert variables["EXACT_GATEWAY_HOST"] == "127.0.0.1"
    assert variables["EXACT_GATEWAY_PORT"] == "8480"
    assert variables["EXACT_GATEWAY_ADMIN_HOST"] == "0.0.0.0"
    assert sidecar["ports"] == [{"name": "admin", "containerPort": 8481, "protocol": "TCP"}]
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert "readinessProbe" not in sidecar, "a token outage must not unready the host app"
    assert sidecar["securityContext"]["runAsUser"] == 10001
    assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["terminationGracePeriodSeconds"] == 30
    labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert labels["exact-gateway-sidecar"] == "shop-exact-gateway"
    assert spec["volumes"] is None, "sandbox: no secret, so no volume"


def test_created_secret_reaches_the_sidecar_as_a_file(example_chart: Path) -> None:
    """The dependency renders the Secret; the host pod mounts it (0444: its fsGroup is unknown)."""
    manifests = _render(example_chart, "native-qa-created-secret")
    assert kinds(manifests) == ["Deployment", "PodMonitor", "Secret"]
    secret = one(manifests, "Secret")
    spec = pod_spec(manifests)
    assert spec["volumes"] == [
        {
            "name": "exact-gateway-secret",
            "secret": {
                "secretName": secret["metadata"]["name"],
                "defaultMode": 0o444,
                "items": [{"key": "client-secret", "path": "client-secret"}],
            },
        }
    ]
    sidecar = gateway_container(spec)
    assert env(sidecar)["EXACT_GATEWAY_CLIENT_SECRET_FILE"] == (
        "/var/run/secrets/exact-gateway/client-secret"
    )
    assert "subPath" not in sidecar["volumeMounts"][0]
    selector = one(manifests, "PodMonitor")["spec"]["selector"]["matchLabels"]
    pod_labels = one(manifests, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items(), "the PodMonitor finds the host pods"


def test_regular_container_fallback(example_chart: Path) -> None:
    """sidecar.native false: a regular container (no restartPolicy), same loopback wiring."""
    spec = pod_spec(_render(example_chart, "regular-container-existing-secret"))
    assert spec["initContainers"] is None
    assert [c["name"] for c in spec["containers"]] == ["app", "exact-gateway"]
    sidecar = gateway_container(spec)
    assert "restartPolicy" not in sidecar
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    variables = env(sidecar)
    assert variables["EXACT_GATEWAY_HOST"] == "127.0.0.1"
    assert set(variables) <= {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    assert spec["volumes"][0]["secret"]["secretName"] == "exact-credentials"


def test_sidecar_templates_refuse_standalone_values(example_chart: Path) -> None:
    """Including the sidecar with mode: standalone (a Deployment too) fails, saying why."""
    with pytest.raises(helm.HelmRenderError, match="need mode: sidecar"):
        render({"gateway": {"mode": "standalone"}}, chart=example_chart)


def test_readme_snippet_is_the_example() -> None:
    """The chart README shows exactly the example's Deployment template."""
    readme = (CHART / "README.md").read_text()
    template = (EXAMPLE / "templates" / "deployment.yaml").read_text()
    body = template.split("\n", 1)[1]  # without the first comment line
    assert body in readme
    values = (EXAMPLE / "values.yaml").read_text()
    gateway_values = re.search(r"^gateway:\n(?:  .*\n)+", values, re.MULTILINE)
    assert gateway_values is not None
    assert gateway_values.group(0) in readme
    chart = (EXAMPLE / "Chart.yaml").read_text()
    dependencies = chart[chart.index("dependencies:") :]
    assert dependencies in readme


def test_corporate_values_reach_the_sidecar(example_chart: Path) -> None:
    """In sidecar mode too: extraEnv, envFrom, the CA bundle and extra volumes (added through
    exact-gateway.sidecar.volumes) and the proxy URL reach the host pod."""
    spec = pod_spec(_render(example_chart, "native-corporate"))
    sidecar = gateway_container(spec)
    assert sidecar["env"][-1] == {"name": "TZ", "value": "UTC"}
    variables = env(sidecar)
    assert variables["EXACT_GATEWAY_CA_BUNDLE_FILE"] == "/etc/exact-gateway/ca/ca-bundle.pem"
    assert variables["EXACT_GATEWAY_EGRESS_PROXY_URL"] == "http://[fd00::1]:3128"
    assert sidecar["envFrom"] == [{"secretRef": {"name": "exact-gateway-extra"}}]
    assert [m["name"] for m in sidecar["volumeMounts"]] == [
        "exact-gateway-secret",
        "exact-gateway-ca-bundle",
        "scratch",
    ]
    assert [v["name"] for v in spec["volumes"]] == [
        "exact-gateway-secret",
        "exact-gateway-ca-bundle",
        "scratch",
    ]
    assert spec["volumes"][1]["secret"]["secretName"] == "corporate-ca"
    # Tracing on with no endpoint: the SDK's default, a collector in the same pod.
    assert variables["OTEL_TRACES_EXPORTER"] == "otlp"
    assert variables["OTEL_SERVICE_NAME"] == "exact-gateway"
    assert variables["OTEL_TRACES_SAMPLER_ARG"] == "0.5"
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in variables
