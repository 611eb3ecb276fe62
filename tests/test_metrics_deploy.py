"""deploy/k8s/check_metrics.py (run by scripts/ci-deploy-checks.sh) passes the suite's metrics pieces and
catches what breaks them: a scraped port the service does not serve, a PodMonitor field the CRD lacks, an
HPA metric no adapter rule serves, an adapter rule on a counter, a dashboard query on a missing metric."""

from __future__ import annotations

import copy
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "deploy" / "k8s"))  # check_metrics imports check_overlay beside it
_spec = importlib.util.spec_from_file_location("check_metrics", ROOT / "deploy" / "k8s" / "check_metrics.py")
assert _spec is not None and _spec.loader is not None
check_metrics = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_metrics)

EXPORTED = check_metrics.exported_samples()
ADAPTER = yaml.safe_load((ROOT / "deploy/prometheus-adapter/values.yaml").read_text())
DASHBOARD = json.loads((ROOT / "deploy/grafana/cir-suite.json").read_text())


@pytest.fixture(scope="module")
def gpu_prod() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (kustomize) is not installed: scripts/ci-deploy-checks.sh installs it")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(ROOT / "deploy/k8s/overlays/gpu-prod")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def _find(docs: list[dict], kind: str, name: str) -> dict:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name))


def test_the_adapter_rules_and_the_dashboard_pass():
    errors, served = check_metrics.check_adapter(ADAPTER, EXPORTED)
    assert errors == []
    assert {"cir_batcher_queued_items", "cir_reasoner_waiting_requests"} <= served
    assert check_metrics.check_dashboard(DASHBOARD, EXPORTED) == []


def test_adapter_and_dashboard_mistakes_are_caught():
    values = copy.deepcopy(ADAPTER)
    values["rules"]["custom"][0]["seriesQuery"] = 'cir_cache_lookups_total{pod!=""}'
    values["rules"]["custom"][1]["metricsQuery"] = "sum(<<.Series>>)"
    errors, _ = check_metrics.check_adapter(values, EXPORTED)
    assert any("is a counter" in e for e in errors)
    assert any("metricsQuery lacks" in e for e in errors)

    dashboard = copy.deepcopy(DASHBOARD)
    dashboard["panels"][1]["targets"][0]["expr"] = "rate(cir_no_such_metric_total[5m])"
    errors = check_metrics.check_dashboard(dashboard, EXPORTED)
    assert errors and "cir_no_such_metric_total" in errors[0]


def test_the_gpu_prod_overlay_passes_and_its_mistakes_are_caught(gpu_prod):
    _, served = check_metrics.check_adapter(ADAPTER, EXPORTED)
    assert check_metrics.check_overlay_metrics(gpu_prod, "gpu-prod", served) == []

    def errors_after(change) -> list[str]:
        docs = copy.deepcopy(gpu_prod)
        change(docs)
        return check_metrics.check_overlay_metrics(docs, "gpu-prod", served)

    wrong_port = errors_after(
        lambda d: _find(d, "ConfigMap", "cir-env")["data"].update(CIR_ENCODER_METRICS_PORT="1")
    )
    assert wrong_port == ["cir-encoder: CIR_ENCODER_METRICS_PORT is '1', the scraped port metrics is 9464"]
    typo = errors_after(
        lambda d: _find(d, "PodMonitor", "cir")["spec"]["podMetricsEndpoints"][0].update(intervall="5s")
    )
    assert typo and "intervall" in typo[0]
    no_policy = errors_after(lambda d: d.remove(_find(d, "NetworkPolicy", "cir-metrics-from-prometheus")))
    assert len(no_policy) == 4
    unserved = errors_after(
        lambda d: _find(d, "HorizontalPodAutoscaler", "cir-reasoner")["spec"]["metrics"][0]["pods"][
            "metric"
        ].update(name="cir_unknown")
    )
    assert any("no prometheus-adapter rule serves" in e for e in unserved)
    assert any("queue depth" in e for e in unserved)
