"""The exact-gateway Helm chart, rendered and linted by the real Helm engine.

Every value set renders, lints clean (``--strict``) and validates against the Kubernetes
schemas of 1.29 (native sidecars) and of the newest release kubernetes-validate knows. The
assertions are on what actually rendered: security settings, probes, ports, and environment
variables that must each be a setting the gateway reads.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

import gateway
from gateway.settings import ENV_PREFIX, Settings, load_tracing_settings
from tests.helm.charts import (
    CHART,
    CRD_KINDS,
    K8S_VERSIONS,
    REPO,
    TRACING_VARIABLES,
    Manifest,
    env,
    gateway_container,
    kinds,
    lint_findings,
    notes,
    one,
    pod_spec,
    render,
    validate,
)

CLIENT_SECRET = "chart-test-client-secret"

QA = {"environment": "qa", "clientId": "partner-client", "scopes": ["practice.get", "patient.get"]}
# The least an install can say: environment has no default, the sandbox is a choice.
SANDBOX: dict[str, Any] = {"settings": {"environment": "sandbox"}}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "sandbox": SANDBOX,
    "sidecar": {
        "mode": "sidecar",
        "settings": QA,
        "secret": {"clientSecret": CLIENT_SECRET},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
    "standalone-everything": {
        "settings": {
            **QA,
            "scopes": "practice.get, patient.get",
            "logFormat": "text",
            "replayBufferBytes": 1048576,
            "breakerFailureRatio": 0.25,
            "drainSeconds": 25.5,
            "apiUrl": "https://qa-api.ex.softwareofexcellence.com",
        },
        "secret": {"clientSecret": CLIENT_SECRET},
        "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
        "podDisruptionBudget": {"minAvailable": 1},
        "networkPolicy": {"clientNamespaceSelector": {"matchLabels": {"team": "payments"}}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True, "annotations": {"grafana_folder": "EXACT"}},
        "commonLabels": {"team": "payments"},
        "podAnnotations": {"example.com/owner": "payments"},
        "image": {"digest": "sha256:" + "ab" * 32},
        "terminationGracePeriodSeconds": 40,
        "tracing": {
            "enabled": True,
            "endpoint": "http://otel-collector.observability:4318",
            "serviceName": "exact-gateway-payments",
            "samplerRatio": 0.25,
            "resourceAttributes": {"deployment.environment.name": "qa", "team": "payments"},
        },
    },
    "existing-secret": {
        "settings": {**QA, "environment": "production"},
        "secret": {"existingSecret": "exact-credentials", "key": "secret"},
    },
    # A corporate cluster: private CA, authenticated egress proxy, its own variables and volumes,
    # the admin port's introspection opened to an operator subnet, a renamed monitoring job.
    "corporate": {
        "settings": {
            **QA,
            "environment": "production",
            "adminIntrospectionFrom": ["127.0.0.1/32", "10.20.0.0/16"],
            "adminAllowedHosts": "exact-gateway.payments.svc",
        },
        "secret": {"existingSecret": "exact-credentials"},
        "extraEnv": [
            {"name": "TZ", "value": "Europe/London"},
            {
                "name": "OTEL_RESOURCE_ATTRIBUTES",
                "valueFrom": {"configMapKeyRef": {"name": "otel", "key": "attributes"}},
            },
        ],
        "envFrom": [{"configMapRef": {"name": "exact-gateway-extra"}}],
        "extraVolumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "16Mi"}}],
        "extraVolumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "caBundle": {"configMap": "corporate-ca", "key": "bundle.pem"},
        "egressProxy": {"existingSecret": "egress-proxy"},
        "serviceMonitor": {"enabled": True, "job": "payments-exact"},
        "prometheusRule": {"enabled": True},
    },
}

STANDALONE_KINDS = {
    "sandbox": [
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ],
    "sidecar": ["ConfigMap", "PodMonitor", "PrometheusRule", "Secret"],
    "standalone-everything": [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PodMonitor",
        "PrometheusRule",
        "Secret",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ],
    "existing-secret": [
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ],
    "corporate": [
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ],
}

RULES = REPO / "config" / "prometheus" / "exact-gateway-rules.yml"
DASHBOARD = REPO / "config" / "grafana" / "exact-gateway-dashboard.json"


@pytest.fixture(scope="module", params=sorted(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Manifest]]:
    return request.param, render(VALUE_SETS[request.param])


def assert_crd_shape(manifest: Manifest) -> None:
    """The Prometheus Operator resources, checked by hand (no schema in kubernetes-validate)."""
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(manifest) == {"apiVersion", "kind", "metadata", "spec"}
    spec = manifest["spec"]
    if manifest["kind"] == "PrometheusRule":
        canonical = (CHART / "files" / "exact-gateway-rules.yml").read_text()
        job = spec["groups"][0]["rules"][0]["expr"].split('"')[1]
        assert spec == yaml.safe_load(
            canonical.replace('job="exact-gateway"', f'job="{job}"')
            .replace("job exact-gateway", f"job {job}")
            .replace("still named exact-gateway", f"still named {job}")
        )
        assert all(group["name"] and group["rules"] for group in spec["groups"])
        return
    endpoints = spec["endpoints" if manifest["kind"] == "ServiceMonitor" else "podMetricsEndpoints"]
    job = endpoints[0]["relabelings"][0]["replacement"]
    assert job in {"exact-gateway", "payments-exact"}
    assert endpoints == [
        {
            "port": "admin",
            "path": "/metrics",
            "interval": "30s",
            "scrapeTimeout": "10s",
            "relabelings": [{"targetLabel": "job", "replacement": job}],
        }
    ]
    assert spec["namespaceSelector"] == {"matchNames": ["apps"]}
    assert spec["selector"]["matchLabels"]


def test_renders_the_expected_resources(rendered: tuple[str, list[Manifest]]) -> None:
    """Each value set renders exactly the resources its mode and switches ask for."""
    name, manifests = rendered
    assert kinds(manifests) == STANDALONE_KINDS[name]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lints_clean(name: str) -> None:
    """helm lint --strict finds no warning or error."""
    assert lint_findings(VALUE_SETS[name]) == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates(rendered: tuple[str, list[Manifest]], version: str) -> None:
    """Every manifest is valid for the Kubernetes version; CRDs are skipped by kind only."""
    _, manifests = rendered
    for manifest in manifests:
        if manifest["kind"] in CRD_KINDS:
            assert_crd_shape(manifest)
        else:
            validate(manifest, version)


def test_recommended_labels_and_version_free_selectors(
    rendered: tuple[str, list[Manifest]],
) -> None:
    """app.kubernetes.io/* labels everywhere; selectors never carry the version."""
    _, manifests = rendered
    for manifest in manifests:
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "exact-gateway"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/version"] == gateway.__version__
        assert labels["app.kubernetes.io/component"] == "proxy"
        assert labels["app.kubernetes.io/part-of"] == "exact-gateway"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        selector = manifest.get("spec", {}).get("selector", {})
        assert "app.kubernetes.io/version" not in selector.get("matchLabels", selector)


def test_every_environment_variable_is_a_gateway_setting(
    rendered: tuple[str, list[Manifest]],
) -> None:
    """Only EXACT_GATEWAY_<field> names the gateway reads (and the standard OTEL_* names of
    tracing); the secret only as a file path."""
    name, manifests = rendered
    readable = {ENV_PREFIX + field.upper() for field in Settings.model_fields} | TRACING_VARIABLES
    extra = VALUE_SETS[name].get("extraEnv", [])
    for manifest in manifests:
        if manifest["kind"] != "Deployment":
            continue
        container = gateway_container(pod_spec([manifest]))
        # extraEnv passes through as written, after the chart's own variables.
        chart_env = container["env"][: len(container["env"]) - len(extra)]
        assert container["env"][len(chart_env) :] == extra
        variables = env({"env": chart_env}, secret_refs={f"{ENV_PREFIX}EGRESS_PROXY_URL"})
        assert set(variables) <= readable, set(variables) - readable
        assert f"{ENV_PREFIX}CLIENT_SECRET" not in variables
    text = json.dumps(manifests)
    assert CLIENT_SECRET not in text, "the secret appears only base64-encoded in the Secret"


def test_defaults_are_hardened() -> None:
    """Non-root numeric user, read-only root, no capabilities, seccomp, no token, resources."""
    spec = pod_spec(render(SANDBOX))
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = gateway_container(spec)
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert set(container["resources"]) == {"requests", "limits"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert container["args"] == ["serve"]
    assert container["image"] == f"registry.example.com/exact-gateway:{gateway.__version__}"
    account = one(render(SANDBOX), "ServiceAccount")
    assert account["automountServiceAccountToken"] is False


def test_standalone_ports_probes_and_environment() -> None:
    """Pod-IP proxy on 8480, admin on 8481, probes on the admin port, the chosen sandbox."""
    manifests = render(SANDBOX)
    container = gateway_container(pod_spec(manifests))
    assert container["ports"] == [
        {"name": "proxy", "containerPort": 8480, "protocol": "TCP"},
        {"name": "admin", "containerPort": 8481, "protocol": "TCP"},
    ]
    assert container["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "time for a token"
    assert env(container) == {
        "EXACT_GATEWAY_HOST": "0.0.0.0",
        "EXACT_GATEWAY_PORT": "8480",
        "EXACT_GATEWAY_ADMIN_HOST": "0.0.0.0",
        "EXACT_GATEWAY_ADMIN_PORT": "8481",
        "EXACT_GATEWAY_ENVIRONMENT": "sandbox",
        "EXACT_GATEWAY_LOG_LEVEL": "info",
        "EXACT_GATEWAY_LOG_FORMAT": "json",
        "EXACT_GATEWAY_SHUTDOWN_GRACE_SECONDS": "2",
        "EXACT_GATEWAY_DRAIN_SECONDS": "20",
    }
    service = one(manifests, "Service")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("proxy", 8480, "proxy"),
        ("admin", 8481, "admin"),
    ]
    assert "SANDBOX" in notes(SANDBOX)


def test_settings_values_become_gateway_environment_variables() -> None:
    """camelCase settings become EXACT_GATEWAY_SNAKE_CASE; lists join; numbers stay exact."""
    manifests = render(VALUE_SETS["standalone-everything"])
    variables = env(gateway_container(pod_spec(manifests)))
    assert variables["EXACT_GATEWAY_SCOPES"] == "practice.get, patient.get"
    assert variables["EXACT_GATEWAY_REPLAY_BUFFER_BYTES"] == "1048576"
    assert variables["EXACT_GATEWAY_BREAKER_FAILURE_RATIO"] == "0.25"
    assert variables["EXACT_GATEWAY_DRAIN_SECONDS"] == "25.5"
    assert variables["EXACT_GATEWAY_API_URL"] == "https://qa-api.ex.softwareofexcellence.com"
    assert variables["EXACT_GATEWAY_CLIENT_ID"] == "partner-client"
    assert "EXACT_GATEWAY_TOKEN_URL" not in variables, "unset settings are not passed"
    scopes = render({"settings": {**QA}, "secret": {"clientSecret": CLIENT_SECRET}})
    listed = env(gateway_container(pod_spec(scopes)))["EXACT_GATEWAY_SCOPES"]
    assert listed == "practice.get patient.get"
    deployment = one(manifests, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    assert gateway_container(pod_spec(manifests))["image"].endswith("@sha256:" + "ab" * 32)


def test_created_secret_is_mounted_as_a_rotatable_file() -> None:
    """secret.clientSecret: a Secret, mounted as a directory (no subPath), read as a file."""
    manifests = render(VALUE_SETS["standalone-everything"])
    secret = one(manifests, "Secret")
    assert secret["metadata"]["name"] == "demo-exact-gateway"
    assert base64.b64decode(secret["data"]["client-secret"]).decode() == CLIENT_SECRET
    spec = pod_spec(manifests)
    container = gateway_container(spec)
    path = "/var/run/secrets/exact-gateway/client-secret"
    assert env(container)["EXACT_GATEWAY_CLIENT_SECRET_FILE"] == path
    assert container["volumeMounts"] == [
        {
            "name": "exact-gateway-secret",
            "mountPath": "/var/run/secrets/exact-gateway",
            "readOnly": True,
        }
    ]
    assert spec["volumes"] == [
        {
            "name": "exact-gateway-secret",
            "secret": {
                "secretName": "demo-exact-gateway",
                "defaultMode": 0o440,
                "items": [{"key": "client-secret", "path": "client-secret"}],
            },
        }
    ]
    annotations = spec.get("annotations", {})
    assert not [a for a in annotations if "checksum" in a], "rotation needs no restart"


def test_existing_secret_is_mounted_and_not_created() -> None:
    """secret.existingSecret + key: no Secret rendered; its key mounted as the secret file."""
    manifests = render(VALUE_SETS["existing-secret"])
    assert "Secret" not in kinds(manifests)
    spec = pod_spec(manifests)
    assert spec["volumes"][0]["secret"]["secretName"] == "exact-credentials"
    assert spec["volumes"][0]["secret"]["items"] == [{"key": "secret", "path": "client-secret"}]
    variables = env(gateway_container(spec))
    assert variables["EXACT_GATEWAY_CLIENT_SECRET_FILE"].endswith("/client-secret")
    assert variables["EXACT_GATEWAY_ENVIRONMENT"] == "production"


def test_network_policy_admits_labelled_clients_and_prometheus_only() -> None:
    """Proxy port: pods with the client label; admin port: Prometheus; nothing else."""
    policy = one(render(VALUE_SETS["standalone-everything"]), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    clients, prometheus = policy["ingress"]
    assert clients == {
        "from": [
            {
                "podSelector": {"matchLabels": {"exact-gateway-client": "true"}},
                "namespaceSelector": {"matchLabels": {"team": "payments"}},
            }
        ],
        "ports": [{"port": 8480, "protocol": "TCP"}],
    }
    assert prometheus["ports"] == [{"port": 8481, "protocol": "TCP"}]
    assert prometheus["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    default = one(render(SANDBOX), "NetworkPolicy")["spec"]["ingress"][0]["from"]
    assert default == [{"podSelector": {"matchLabels": {"exact-gateway-client": "true"}}}]


def test_termination_grace_covers_the_drain() -> None:
    """Default 30 s > grace 2 + drain 20; longer drains raise it; too short is refused."""
    assert pod_spec(render(SANDBOX))["terminationGracePeriodSeconds"] == 30
    longer = render(
        {"settings": {"environment": "sandbox", "drainSeconds": 40, "shutdownGraceSeconds": 2.5}}
    )
    assert pod_spec(longer)["terminationGracePeriodSeconds"] == 48
    with pytest.raises(helm.HelmRenderError, match=r"terminationGracePeriodSeconds \(20\)"):
        render({**SANDBOX, "terminationGracePeriodSeconds": 20})


def test_sidecar_mode_renders_no_workload() -> None:
    """mode: sidecar renders only the Secret and monitoring; the PodMonitor finds host pods."""
    manifests = render(VALUE_SETS["sidecar"])
    monitor = one(manifests, "PodMonitor")
    assert monitor["spec"]["selector"] == {
        "matchLabels": {"exact-gateway-sidecar": "demo-exact-gateway"}
    }
    with pytest.raises(helm.HelmRenderError, match="serviceMonitor needs mode: standalone"):
        render({**VALUE_SETS["sidecar"], "serviceMonitor": {"enabled": True}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"settings": {"environment": "qa"}}, "settings.clientId is required"),
        ({"settings": {**QA, "scopes": []}}, "settings.scopes is required"),
        ({"settings": QA, "secret": {"create": False}}, "a client secret is required"),
        (
            {**SANDBOX, "secret": {"clientSecret": "x", "existingSecret": "y"}},
            "set secret.existingSecret or secret.clientSecret, not both",
        ),
    ],
)
def test_inconsistent_values_fail_with_a_clear_message(
    values: dict[str, Any], message: str
) -> None:
    """Configuration the gateway would crash on fails the render instead, saying why."""
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


def test_a_string_port_breaks_the_schema() -> None:
    """service.port: "8480" is refused by values.schema.json, naming the key and the type."""
    bad = {"service": {"port": "8480"}}
    expected = "at '/service/port': got string, want integer"
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match=re.escape(expected)):
            chart.validate_schema(bad)
    with pytest.raises(helm.HelmValuesError, match=re.escape(expected)):
        render(bad)
    assert any(expected in finding for finding in lint_findings(bad))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"ports": {"proxy": 70000}}, "at '/ports/proxy': maximum: got 70,000, want 65,535"),
        ({"mode": "daemonset"}, "at '/mode': value must be one of 'standalone', 'sidecar'"),
        (
            {"settings": {"retryMaxAtempts": 3}},
            "at '/settings': additional properties 'retryMaxAtempts' not allowed",
        ),
        ({"settings": {"logLevel": "verbose"}}, "at '/settings/logLevel': value must be one of"),
        ({"tracing": {"samplerRatio": 1.5}}, "at '/tracing/samplerRatio': maximum"),
        ({"tracing": {"endpoint": "collector:4318"}}, "at '/tracing/endpoint'"),
        ({"tracing": {"resourceAttributes": {"a": "x,y=z"}}}, "at '/tracing/resourceAttributes"),
        ({"tracing": {"exporter": "zipkin"}}, "additional properties 'exporter' not allowed"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], expected: str) -> None:
    """Out-of-range ports, unknown modes, misspelt or invalid settings fail validation."""
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match=re.escape(expected)):
            chart.validate_schema(values)


def test_schema_settings_are_the_gateway_settings() -> None:
    """values.schema.json accepts exactly the gateway's settings the chart does not manage."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    properties = schema["properties"]["settings"]["properties"]
    managed = {
        "client_secret",
        "client_secret_file",
        "host",
        "port",
        "admin_host",
        "admin_port",
        "ca_bundle_file",  # from caBundle: a mounted ConfigMap or Secret
        "egress_proxy_url",  # from egressProxy: a literal URL or a Secret
    }
    expected = {
        re.sub(r"_(.)", lambda m: m.group(1).upper(), name)
        for name in Settings.model_fields
        if name not in managed
    }
    assert set(properties) == expected
    for name, field in Settings.model_fields.items():
        camel = re.sub(r"_(.)", lambda m: m.group(1).upper(), name)
        if name not in managed and field.annotation in (int, float):
            kind = "integer" if field.annotation is int else "number"
            assert properties[camel]["type"] == kind, name
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


def test_versions_agree() -> None:
    """Chart appVersion, the image tag and the package version are one version."""
    with helm.Chart.load(CHART) as chart:
        metadata, values = chart.metadata, chart.values
    assert metadata["apiVersion"] == "v2"
    assert metadata["appVersion"] == gateway.__version__
    assert values["image"]["tag"] == gateway.__version__


def _leaves(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Value paths down to free-form maps (where the schema stops naming the keys)."""
    paths = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        node = schema.get("properties", {}).get(key, {})
        selector = "matchLabels" in node.get("properties", {})
        if isinstance(value, dict) and node.get("additionalProperties") is False and not selector:
            paths.extend(_leaves(value, node, f"{path}."))
        else:
            paths.append(path)
    return paths


def test_readme_documents_every_value() -> None:
    """Each value of values.yaml (and each setting's section) is named in the chart README."""
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    paths = _leaves(values, schema)
    assert len(paths) > 60
    settings = json.loads((CHART / "values.schema.json").read_text())["properties"]["settings"]
    paths += [f"settings.{name}" for name in settings["properties"]]
    missing = [path for path in dict.fromkeys(paths) if f"`{path}`" not in readme]
    assert missing == []


def test_chart_copies_of_rules_and_dashboard_match_config() -> None:
    """files/ holds byte-identical copies of config/'s rules and dashboard (Helm reads no
    file outside the chart), and they render unchanged."""
    for original in (RULES, DASHBOARD):
        copy = CHART / "files" / original.name
        assert original.is_file(), f"{original} is missing"
        assert copy.read_bytes() == original.read_bytes(), f"cp {original} {copy}"
    manifests = render(VALUE_SETS["standalone-everything"])
    dashboard = one(manifests, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"] == {"exact-gateway-dashboard.json": DASHBOARD.read_text()}
    json.loads(dashboard["data"]["exact-gateway-dashboard.json"])
    rule = one(manifests, "PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_environment_is_required_and_names_its_choices() -> None:
    """No environment, no render: the message names the value and its three choices."""
    message = "settings.environment is required: choose qa, production or sandbox"
    for values in ({}, {"settings": {"clientId": "partner-client"}}, {"mode": "sidecar"}):
        with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
            render(values)
    with helm.Chart.load(CHART) as chart:
        assert "environment" not in chart.values["settings"], "no default to fall back on"


def test_corporate_values_reach_the_pod_spec() -> None:
    """extraEnv, envFrom, extra volumes, the CA bundle (read-only, its file in
    EXACT_GATEWAY_CA_BUNDLE_FILE) and the proxy URL from a Secret all land in the pod."""
    values = VALUE_SETS["corporate"]
    spec = pod_spec(render(values))
    container = gateway_container(spec)
    variables = env({"env": container["env"][:-2]}, secret_refs={f"{ENV_PREFIX}EGRESS_PROXY_URL"})
    assert variables[f"{ENV_PREFIX}CA_BUNDLE_FILE"] == "/etc/exact-gateway/ca/ca-bundle.pem"
    assert variables[f"{ENV_PREFIX}EGRESS_PROXY_URL"] == "secret:egress-proxy/url"
    assert variables[f"{ENV_PREFIX}ADMIN_INTROSPECTION_FROM"] == "127.0.0.1/32 10.20.0.0/16"
    assert variables[f"{ENV_PREFIX}ADMIN_ALLOWED_HOSTS"] == "exact-gateway.payments.svc"
    assert container["env"][-2:] == values["extraEnv"]
    assert container["envFrom"] == values["envFrom"]
    assert container["volumeMounts"] == [
        {
            "name": "exact-gateway-secret",
            "mountPath": "/var/run/secrets/exact-gateway",
            "readOnly": True,
        },
        {"name": "exact-gateway-ca-bundle", "mountPath": "/etc/exact-gateway/ca", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    assert spec["volumes"][1:] == [
        {
            "name": "exact-gateway-ca-bundle",
            "configMap": {
                "name": "corporate-ca",
                "defaultMode": 0o444,
                "items": [{"key": "bundle.pem", "path": "ca-bundle.pem"}],
            },
        },
        {"name": "scratch", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    from_secret = render({**SANDBOX, "caBundle": {"secret": "corporate-ca"}})
    volume = pod_spec(from_secret)["volumes"][0]
    assert volume["secret"] == {
        "secretName": "corporate-ca",
        "defaultMode": 0o444,
        "items": [{"key": "ca.crt", "path": "ca-bundle.pem"}],
    }
    plain = render({**SANDBOX, "egressProxy": {"url": "http://proxy.corp.example:3128"}})
    proxy = env(gateway_container(pod_spec(plain)))[f"{ENV_PREFIX}EGRESS_PROXY_URL"]
    assert proxy == "http://proxy.corp.example:3128"


def test_redis_url_from_a_secret_file_and_the_state_file_on_an_emptydir() -> None:
    """redis.existingSecret is mounted read-only and passed as EXACT_GATEWAY_REDIS_URL_FILE
    (never as a value); the state file lives on an emptyDir when asked, and not otherwise."""
    fleet = {"redis": {"existingSecret": "fleet-redis"}, "stateFile": {"enabled": True}}
    spec = pod_spec(render({**SANDBOX, **fleet}))
    container = gateway_container(spec)
    variables = env(container)
    assert variables[f"{ENV_PREFIX}REDIS_URL_FILE"] == (
        "/var/run/secrets/exact-gateway-redis/redis-url"
    )
    assert variables[f"{ENV_PREFIX}STATE_FILE"] == "/var/lib/exact-gateway/state.json"
    assert f"{ENV_PREFIX}REDIS_URL" not in variables
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["exact-gateway-redis"] == {
        "name": "exact-gateway-redis",
        "mountPath": "/var/run/secrets/exact-gateway-redis",
        "readOnly": True,
    }
    assert mounts["exact-gateway-state"] == {
        "name": "exact-gateway-state",
        "mountPath": "/var/lib/exact-gateway",
    }
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["exact-gateway-redis"]["secret"] == {
        "secretName": "fleet-redis",
        "defaultMode": 0o440,
        "items": [{"key": "url", "path": "redis-url"}],
    }
    assert volumes["exact-gateway-state"] == {
        "name": "exact-gateway-state",
        "emptyDir": {"sizeLimit": "16Mi"},
    }
    alone = gateway_container(pod_spec(render(SANDBOX)))
    assert f"{ENV_PREFIX}STATE_FILE" not in env(alone)
    assert f"{ENV_PREFIX}REDIS_URL_FILE" not in env(alone)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {
                "redis": {"existingSecret": "r"},
                "settings": {**SANDBOX["settings"], "redisUrl": "redis://h:6379/0"},
            },
            "set redis.existingSecret or settings.redisUrl/redisUrlFile, not both",
        ),
        (
            {
                "stateFile": {"enabled": True},
                "settings": {**SANDBOX["settings"], "stateFile": "/data/state.json"},
            },
            "set stateFile.enabled or settings.stateFile, not both",
        ),
        (
            {"caBundle": {"configMap": "a", "secret": "b"}},
            "set caBundle.configMap or caBundle.secret, not both",
        ),
        (
            {"egressProxy": {"url": "http://p:3128", "existingSecret": "s"}},
            "set egressProxy.url or egressProxy.existingSecret, not both",
        ),
        (
            {"egressProxy": {"url": "http://user:pass@p:3128"}},
            "egressProxy.url must not carry credentials",
        ),
        ({"egressProxy": {"url": "proxy.corp.example"}}, "egressProxy.url must look like"),
        (
            {
                "serviceMonitor": {"enabled": True, "job": "a"},
                "podMonitor": {"enabled": True, "job": "b"},
                "prometheusRule": {"enabled": True},
            },
            "serviceMonitor.job (a) and podMonitor.job (b) differ",
        ),
    ],
)
def test_inconsistent_corporate_values_fail(values: dict[str, Any], message: str) -> None:
    """Ambiguous bundles and proxies, a password in the pod spec, and two jobs fail."""
    with pytest.raises(helm.HelmRenderError) as caught:
        render({**SANDBOX, **values})
    assert message in str(caught.value)
    assert "pass@" not in str(caught.value)


def test_tracing_values_become_the_standard_otel_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tracing.* maps to OTEL_* (which the gateway then reads as tracing on); off, the chart
    sets no OTEL_* variable at all."""
    container = gateway_container(pod_spec(render(VALUE_SETS["standalone-everything"])))
    variables = {k: v for k, v in env(container).items() if k.startswith("OTEL_")}
    assert variables == {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.observability:4318",
        "OTEL_SERVICE_NAME": "exact-gateway-payments",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=qa,team=payments",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert load_tracing_settings().enabled
    for values in (SANDBOX, {**SANDBOX, "tracing": {"endpoint": "http://c:4318"}}):
        container = gateway_container(pod_spec(render(values)))
        assert not [e for e in container["env"] if e["name"].startswith("OTEL_")]
