"""Rendering, linting and schema-validating the Helm charts under helm/ with the real Helm engine.

``helm_python`` is the Helm v4 SDK (the Go library behind ``helm template`` and ``helm lint``)
loaded in-process; ``kubernetes_validate`` holds the Kubernetes OpenAPI schemas of each release.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "exact-gateway"
EXAMPLE = REPO / "helm" / "examples" / "sidecar-demo"

# Oldest Kubernetes the chart supports (native sidecars) and the newest the validator knows.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())

# Prometheus Operator custom resources: no schema in kubernetes-validate, so the tests check
# their apiVersion, kind and shape themselves (see assert_crd_shape).
CRD_KINDS = frozenset({"ServiceMonitor", "PodMonitor", "PrometheusRule"})

Manifest = dict[str, Any]

# The standard OpenTelemetry variables the chart sets from tracing.* (the gateway and its SDK
# read them; they carry no EXACT_GATEWAY_ prefix).
TRACING_VARIABLES = frozenset(
    {
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_RESOURCE_ATTRIBUTES",
    }
)


def resolve_example(workdir: Path) -> Path:
    """The sidecar example with its dependency resolved, as `helm dependency update` does it.

    Both charts are copied into ``workdir`` (keeping the relative file:// path of the
    dependency), so the working tree gets no charts/ or Chart.lock.
    """
    shutil.copytree(CHART, workdir / "helm" / "exact-gateway")
    example = workdir / "helm" / "examples" / "sidecar-demo"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    helm.dependency_update(example)
    return example


def render(
    values: dict[str, Any] | None = None,
    *,
    chart: Path = CHART,
    name: str = "demo",
    namespace: str = "apps",
) -> list[Manifest]:
    """Every manifest the chart renders for ``values`` (NOTES.txt and empty files left out)."""
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values, name=name, namespace=namespace)
    manifests: list[Manifest] = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def notes(values: dict[str, Any] | None = None, *, chart: Path = CHART) -> str:
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(values, name="demo", namespace="apps")
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def lint_findings(values: dict[str, Any] | None = None, *, chart: Path = CHART) -> list[str]:
    """``helm lint --strict`` warnings and errors (informational messages left out)."""
    report = helm.lint(chart, values, strict=True, kube_version="v1.29.0")
    found = [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2]
    return found + list(report["errors"])


def validate(manifest: Manifest, version: str) -> None:
    """Validate one manifest against the Kubernetes schema (strict: unknown fields fail)."""
    kubernetes_validate.validate(manifest, version, strict=True)


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[m['kind'] for m in manifests]}"
    return found[0]


def kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def pod_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "Deployment")["spec"]["template"]["spec"]
    return spec


def gateway_container(spec: dict[str, Any], name: str = "exact-gateway") -> dict[str, Any]:
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    found: dict[str, Any] = next(c for c in containers if c["name"] == name)
    return found


def env(
    container: dict[str, Any], secret_refs: frozenset[str] | set[str] = frozenset()
) -> dict[str, str]:
    """The container's variables. Every value is literal, except the names in
    ``secret_refs``, which may come from a Secret (returned as ``secret:<name>/<key>``)."""
    found = {}
    for e in container["env"]:
        if "valueFrom" in e:
            assert e["name"] in secret_refs, f"{e['name']}: every value is literal"
            ref = e["valueFrom"]["secretKeyRef"]
            found[e["name"]] = f"secret:{ref['name']}/{ref['key']}"
        else:
            found[e["name"]] = e["value"]
    return found
