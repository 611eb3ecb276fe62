"""The rules for the suite's metrics pieces (scripts/ci-deploy-checks.sh, after check_overlay.py).

    python deploy/k8s/check_metrics.py RENDERED.yaml OVERLAY [--adapter VALUES] [--dashboard JSON]

(defaults: deploy/prometheus-adapter/values.yaml, deploy/grafana/cir-suite.json)

kubernetes-validate has no schema for the Prometheus Operator's PodMonitor (it warns and passes), the
prometheus-adapter rules are Helm values, and the Grafana dashboard is JSON; no CRD, chart or Grafana is
fetched in CI. So this checks what matters for the suite:
- a rendered overlay's PodMonitors (components/metrics): only fields the monitoring.coreos.com/v1 PodMonitor
  has, durations Prometheus parses, a scrape timeout within the interval; the pods they select are exactly
  the four services', each with the container port they scrape, that port is the service's
  CIR_<SERVICE>_METRICS_PORT (cir-env; not its gRPC port), and a NetworkPolicy lets the scrapes in;
- the overlay's HPAs: every custom metric (type Pods / Object) is served by a prometheus-adapter rule, a Pods
  metric with an AverageValue target, and only with a PodMonitor feeding Prometheus; in gpu-prod the three
  model services scale on their queue depth;
- the prometheus-adapter values: only top-level keys the chart has, a Prometheus URL, and each rule reading
  one gauge the services export (cir_common.metrics), mapped to namespace and pod, with a query the adapter
  can fill in;
- the dashboard: valid JSON, unique panel ids and query refIds, queries through the datasource variable, and
  only metric names the services export.
Needs the suite installed (cir_common.metrics) and PyYAML.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from check_overlay import SERVICES, _allows_port, _generated, _selects

from cir_common.metrics import exported_samples

ROOT = Path(__file__).resolve().parents[2]
MONITORING = "monitoring.coreos.com/v1"
# The fields of monitoring.coreos.com/v1 PodMonitor (Prometheus Operator 0.7x / 0.8x).
PODMONITOR_SPEC_KEYS = {
    "jobLabel", "podTargetLabels", "podMetricsEndpoints", "selector", "selectorMechanism",
    "namespaceSelector", "sampleLimit", "targetLimit", "labelLimit", "labelNameLengthLimit",
    "labelValueLengthLimit", "keepDroppedTargets", "attachMetadata", "scrapeProtocols",
    "fallbackScrapeProtocol", "scrapeClassicHistograms", "nativeHistogramBucketLimit",
    "nativeHistogramMinBucketFactor", "convertClassicHistogramsToNHCB", "scrapeClass", "bodySizeLimit",
}  # fmt: skip
ENDPOINT_KEYS = {
    "port", "portNumber", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout",
    "honorLabels", "honorTimestamps", "trackTimestampsStaleness", "metricRelabelings", "relabelings",
    "proxyUrl", "followRedirects", "enableHttp2", "filterRunning", "basicAuth", "oauth2", "authorization",
    "bearerTokenSecret", "tlsConfig", "noProxy", "proxyFromEnvironment", "proxyConnectHeader",
}  # fmt: skip
RELABEL_KEYS = {"sourceLabels", "separator", "targetLabel", "regex", "modulus", "replacement", "action"}
RELABEL_ACTIONS = {
    "replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep", "lowercase", "uppercase",
    "keepequal", "dropequal",
}  # fmt: skip
DURATION = re.compile(r"(?:\d+(?:ms|s|m|h|d|w|y))+")
# Top-level keys of the prometheus-community/prometheus-adapter chart's values (4.x / 5.x).
ADAPTER_KEYS = {
    "affinity", "topologySpreadConstraints", "image", "logLevel", "metricsRelistInterval", "listenPort",
    "nodeSelector", "priorityClassName", "namespaceOverride", "customAnnotations", "customLabels",
    "lifecycle", "livenessProbe", "readinessProbe", "startupProbe", "rbac", "psp", "serviceAccount",
    "dnsConfig", "resources", "rules", "service", "tls", "env", "extraArguments", "extraContainers",
    "extraVolumes", "extraVolumeMounts", "tolerations", "podLabels", "podAnnotations",
    "deploymentAnnotations", "hostNetwork", "podSecurityContext", "securityContext", "podDisruptionBudget",
    "certManager", "prometheus", "replicas", "strategy",
}  # fmt: skip
ADAPTER_RULE_KEYS = {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
QUERY_FIELDS = ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>")
METRIC_NAME = re.compile(r"\b(?:cir|process|python)_[a-z0-9_]+")
# What each model service's HPA must follow in these overlays: its queue depth.
QUEUE_METRICS = {
    "gpu-prod": {
        "encoder": "cir_batcher_queued_items",
        "captioner": "cir_batcher_queued_items",
        "reasoner": "cir_reasoner_waiting_requests",
    }
}


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration))


def check_overlay_metrics(docs: list[dict], overlay: str, adapter_metrics: set[str]) -> list[str]:
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    monitors = by_kind.get("PodMonitor", {})
    errors = []
    for name, monitor in monitors.items():
        errors += _podmonitor_errors(name, monitor, by_kind)
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        for metric in hpa["spec"].get("metrics", []):
            kind = metric["type"]
            if kind not in ("Pods", "Object"):
                continue
            spec = metric[kind[0].lower() + kind[1:]]
            metric_name = spec["metric"]["name"]
            if metric_name not in adapter_metrics:
                errors.append(
                    f"HPA {name}: no prometheus-adapter rule serves the {kind} metric {metric_name}"
                )
            if not monitors:
                errors.append(
                    f"HPA {name}: scales on {metric_name}, but no PodMonitor has Prometheus scrape it"
                )
            if kind == "Pods" and spec["target"].get("type") != "AverageValue":
                errors.append(f"HPA {name}: a Pods metric takes an AverageValue target, not {spec['target']}")
    for service, metric_name in QUEUE_METRICS.get(overlay, {}).items():
        hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(f"cir-{service}", {})
        names = {
            m["pods"]["metric"]["name"] for m in hpa.get("spec", {}).get("metrics", []) if m["type"] == "Pods"
        }
        if metric_name not in names:
            errors.append(
                f"HPA cir-{service}: overlay {overlay} must scale it on its queue depth ({metric_name})"
            )
    return errors


def _podmonitor_errors(name: str, monitor: dict, by_kind: dict[str, dict[str, dict]]) -> list[str]:
    label = f"PodMonitor {name}"
    errors = []
    if monitor.get("apiVersion") != MONITORING:
        errors.append(f"{label}: apiVersion must be {MONITORING}")
    spec = monitor.get("spec", {})
    unknown = sorted(set(spec) - PODMONITOR_SPEC_KEYS)
    if unknown:
        errors.append(f"{label}: spec fields a PodMonitor does not have: {unknown}")
    selector = spec.get("selector")
    if not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        errors.append(
            f"{label}: spec.selector must select the services' pods (an empty one selects every pod)"
        )
        selector = {}
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints:
        errors.append(f"{label}: no podMetricsEndpoints")
    config_maps = by_kind.get("ConfigMap", {})
    env = _generated(config_maps, "cir-env")["data"] if config_maps else {}
    selected = {}
    for deployment_name, deployment in by_kind.get("Deployment", {}).items():
        pod = deployment["spec"]["template"]
        if _selects(selector, pod["metadata"].get("labels", {})):
            selected[deployment_name] = pod
    wanted = {f"cir-{service}" for service in SERVICES}
    if set(selected) != wanted:
        errors.append(f"{label}: selects {sorted(selected)}, must select exactly {sorted(wanted)}")
    for index, endpoint in enumerate(endpoints):
        where = f"{label} podMetricsEndpoints[{index}]"
        unknown = sorted(set(endpoint) - ENDPOINT_KEYS)
        if unknown:
            errors.append(f"{where}: fields a PodMetricsEndpoint does not have: {unknown}")
        for field in ("interval", "scrapeTimeout"):
            if field in endpoint and not DURATION.fullmatch(str(endpoint[field])):
                errors.append(f"{where}: {field} {endpoint[field]!r} is not a Prometheus duration")
        timeout, interval = endpoint.get("scrapeTimeout"), endpoint.get("interval")
        if timeout and interval and _seconds(timeout) > _seconds(interval):
            errors.append(f"{where}: scrapeTimeout exceeds interval")
        if endpoint.get("path", "/metrics") != "/metrics":
            errors.append(f"{where}: the services answer on /metrics, not {endpoint['path']}")
        for relabel in (*endpoint.get("relabelings", []), *endpoint.get("metricRelabelings", [])):
            if set(relabel) - RELABEL_KEYS or relabel.get("action", "replace") not in RELABEL_ACTIONS:
                errors.append(f"{where}: not a valid relabeling: {relabel}")
        port_name = endpoint.get("port")
        if not port_name:
            errors.append(f"{where}: name the container port to scrape (port)")
            continue
        for deployment_name, pod in selected.items():
            errors += _scraped_port_errors(deployment_name, pod, port_name, env, by_kind)
    return errors


def _scraped_port_errors(
    deployment_name: str, pod: dict, port_name: str, env: dict[str, str], by_kind: dict[str, dict[str, dict]]
) -> list[str]:
    service = deployment_name.removeprefix("cir-")
    container = next((c for c in pod["spec"]["containers"] if c["name"] == service), None)
    if container is None:
        return [f"{deployment_name}: no container {service}"]
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if port_name not in ports:
        return [f"{deployment_name}: container {service} has no port named {port_name!r} to scrape"]
    errors = []
    port = ports[port_name]
    variable = f"CIR_{service.upper()}_METRICS_PORT"
    container_env = {e["name"]: e.get("value") for e in container.get("env", [])}
    configured = container_env.get(variable, env.get(variable, "0"))
    if str(configured) != str(port):
        errors.append(
            f"{deployment_name}: {variable} is {configured!r}, the scraped port {port_name} is {port}"
        )
    if port == SERVICES[service]:
        errors.append(f"{deployment_name}: the metrics port {port} is the gRPC port")
    labels = pod["metadata"].get("labels", {})
    allowed = any(
        "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and _selects(policy["spec"].get("podSelector", {}), labels)
        and any(_allows_port(rule, port) for rule in policy["spec"].get("ingress", []))
        for policy in by_kind.get("NetworkPolicy", {}).values()
    )
    if not allowed:
        errors.append(f"{deployment_name}: no NetworkPolicy lets Prometheus reach port {port}")
    return errors


def check_adapter(values: dict[str, Any], exported: dict[str, str]) -> tuple[list[str], set[str]]:
    """Errors in the prometheus-adapter values, and the custom metric names its rules serve."""
    errors = []
    unknown = sorted(set(values) - ADAPTER_KEYS)
    if unknown:
        errors.append(
            f"adapter values: top-level keys the chart does not have (Helm ignores them): {unknown}"
        )
    if not str(values.get("prometheus", {}).get("url", "")).startswith(("http://", "https://")):
        errors.append("adapter values: prometheus.url must be the Prometheus Service's http(s) URL")
    rules = values.get("rules", {})
    if rules.get("default", True) is not False:
        errors.append("adapter values: rules.default must be false (only the suite's rules)")
    served = set()
    for index, rule in enumerate(rules.get("custom") or []):
        where = f"adapter rules.custom[{index}]"
        unknown = sorted(set(rule) - ADAPTER_RULE_KEYS)
        if unknown:
            errors.append(f"{where}: keys a rule does not have: {unknown}")
        names = METRIC_NAME.findall(rule.get("seriesQuery", ""))
        if len(names) != 1:
            errors.append(f"{where}: seriesQuery must name one metric, not {names}")
            continue
        series = names[0]
        if series not in exported:
            errors.append(f"{where}: {series} is not a metric the services export (cir_common.metrics)")
        elif exported[series] != "gauge":
            errors.append(f"{where}: {series} is a {exported[series]}; scale on a gauge (a queue depth)")
        overrides = rule.get("resources", {}).get("overrides", {})
        if {key: value.get("resource") for key, value in overrides.items()} != {
            "namespace": "namespace",
            "pod": "pod",
        }:
            errors.append(
                f"{where}: resources.overrides must map the labels namespace and pod to their resources"
            )
        query = rule.get("metricsQuery", "")
        missing = [field for field in QUERY_FIELDS if field not in query]
        if missing:
            errors.append(f"{where}: metricsQuery lacks {missing}")
        name = rule.get("name", {})
        if name.get("matches") and not re.search(name["matches"], series):
            errors.append(f"{where}: name.matches {name['matches']!r} does not match {series}")
        served.add(name.get("as") or series)
    return errors, served


def check_dashboard(dashboard: dict[str, Any], exported: dict[str, str]) -> list[str]:
    errors = []
    for key in ("title", "uid", "panels", "schemaVersion"):
        if key not in dashboard:
            errors.append(f"dashboard: no {key}")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    if variables.get("datasource", {}).get("type") != "datasource":
        errors.append("dashboard: no datasource variable (pick the Prometheus at import)")
    panels = list(dashboard.get("panels", []))
    for row in list(panels):
        panels += row.get("panels", [])
    ids = [panel.get("id") for panel in panels]
    if len(ids) != len(set(ids)) or None in ids:
        errors.append("dashboard: every panel needs an id of its own")
    for panel in panels:
        if panel.get("type") == "row":
            continue
        title = panel.get("title", panel.get("id"))
        targets = panel.get("targets") or []
        if not targets:
            errors.append(f"dashboard panel {title!r}: no query")
        refs = [target.get("refId") for target in targets]
        if len(refs) != len(set(refs)) or None in refs:
            errors.append(f"dashboard panel {title!r}: each query needs a refId of its own")
        for target in targets:
            if target.get("datasource", panel.get("datasource", {})).get("uid") != "${datasource}":
                errors.append(f"dashboard panel {title!r}: query through the ${{datasource}} variable")
            unknown = sorted(set(METRIC_NAME.findall(target.get("expr", ""))) - set(exported))
            if not target.get("expr"):
                errors.append(f"dashboard panel {title!r}: a query without expr")
            if unknown:
                errors.append(f"dashboard panel {title!r}: metrics the services do not export: {unknown}")
    return errors


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rendered", type=Path)
    parser.add_argument("overlay")
    parser.add_argument("--adapter", type=Path, default=ROOT / "deploy/prometheus-adapter/values.yaml")
    parser.add_argument("--dashboard", type=Path, default=ROOT / "deploy/grafana/cir-suite.json")
    args = parser.parse_args(argv)
    exported = exported_samples()
    errors, served = check_adapter(yaml.safe_load(args.adapter.read_text(encoding="utf-8")), exported)
    errors += check_dashboard(json.loads(args.dashboard.read_text(encoding="utf-8")), exported)
    with args.rendered.open(encoding="utf-8") as handle:
        docs = [d for d in yaml.safe_load_all(handle) if d]
    errors += check_overlay_metrics(docs, args.overlay, served)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    monitors = sum(d["kind"] == "PodMonitor" for d in docs)
    print(
        f"ok  {args.overlay}: {monitors} PodMonitor(s), scraped ports and network policies, HPA custom "
        f"metrics served by the prometheus-adapter rules ({', '.join(sorted(served))}), the Grafana dashboard"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
