"""The suite's own rules for a rendered overlay (scripts/ci-deploy-checks.sh, after kubernetes-validate).

    python deploy/k8s/check_overlay.py RENDERED.yaml OVERLAY_NAME

Checks what schema validation cannot: native gRPC probes on the right port, GPUs only where they belong,
headless Services, a PDB and an HPA per service, connection ageing, network policies, and that every service
accepts its configuration as its pod would load it (the rendered cir-env ConfigMap plus the container's own
env, and the cir-profile ConfigMap's profile.toml): an unknown or malformed setting fails here, not at start.
Needs the suite installed (the four services' settings modules).
"""

from __future__ import annotations

import importlib
import sys
import tempfile
from pathlib import Path

import yaml

from cir_common.config import load_settings
from cir_common.local_suite import DEFAULT_PORTS as SERVICES  # service -> its default port

GPU_SERVICES = {"encoder", "captioner", "reasoner"}
GPU_OVERLAYS = {"gpu-prod"}  # overlays whose model services get one GPU each
GPU = "nvidia.com/gpu"


def check(docs: list[dict], overlay: str) -> list[str]:
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config_maps = by_kind.get("ConfigMap", {})
    env = _generated(config_maps, "cir-env")["data"]
    profile = _generated(config_maps, "cir-profile")["data"]["profile.toml"]
    errors = []
    for service, port in SERVICES.items():
        name = f"cir-{service}"
        deployment = by_kind.get("Deployment", {}).get(name)
        if deployment is None:
            errors.append(f"no Deployment {name}")
            continue
        pod = deployment["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == service)
        if pod.get("enableServiceLinks") is not False:
            errors.append(
                f"{name}: enableServiceLinks must be false (CIR_* link variables break the settings)"
            )
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc_probe = container.get(probe, {}).get("grpc")
            if not grpc_probe or grpc_probe.get("port") != port:
                errors.append(f"{name}: {probe} must be a native gRPC probe on {port}")
        if pod["securityContext"].get("runAsNonRoot") is not True:
            errors.append(f"{name}: must run as non-root")
        resources = container["resources"]
        if "requests" not in resources:
            errors.append(f"{name}: no resource requests")
        wants_gpu = service in GPU_SERVICES and overlay in GPU_OVERLAYS
        for key in ("requests", "limits"):
            gpus = resources.get(key, {}).get(GPU)
            if gpus != (1 if wants_gpu else None):
                errors.append(f"{name}: {key}.{GPU} is {gpus!r} in overlay {overlay}")
        svc = by_kind.get("Service", {}).get(name)
        if svc is None or svc["spec"].get("clusterIP") != "None":
            errors.append(f"{name}: the Service must be headless (client-side round_robin)")
        for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
            if name not in by_kind.get(kind, {}):
                errors.append(f"{name}: no {kind}")
        if float(env.get(f"CIR_{service.upper()}_MAX_CONNECTION_AGE_S", "0")) <= 0:
            errors.append(f"cir-env: CIR_{service.upper()}_MAX_CONNECTION_AGE_S must be > 0")
        pod_env = {**env, **{e["name"]: e["value"] for e in container.get("env", []) if "value" in e}}
        errors += _settings_errors(service, pod_env, profile)
    if len(by_kind.get("NetworkPolicy", {})) < 4:
        errors.append("the NetworkPolicies are missing")
    return errors


def _generated(config_maps: dict[str, dict], prefix: str) -> dict:
    """The ConfigMap that configMapGenerator named `prefix-<hash>`."""
    return next(doc for name, doc in config_maps.items() if name.rsplit("-", 1)[0] == prefix)


def _settings_errors(service: str, pod_env: dict[str, str], profile_text: str) -> list[str]:
    module = importlib.import_module(f"cir_{service}.settings")
    cls = next(
        value
        for key, value in vars(module).items()
        if key.endswith("Settings") and isinstance(value, type) and value.__module__ == module.__name__
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profile.toml"
        path.write_text(profile_text, encoding="utf-8")
        environ = {k: v for k, v in pod_env.items() if k != "CIR_PROFILE"}
        try:
            load_settings(
                cls, section=module.SECTION, env_prefix=module.ENV_PREFIX, profile=path, environ=environ
            )
        except Exception as error:  # noqa: BLE001  (any refusal is a finding)
            return [f"cir-{service}: its settings do not load: {error}"]
    return []


def main(argv: list[str]) -> int:
    path, overlay = argv
    with open(path, encoding="utf-8") as handle:
        docs = [d for d in yaml.safe_load_all(handle) if d]
    errors = check(docs, overlay)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(
        f"ok  {overlay}: gRPC probes, GPUs, headless Services, PDBs, HPAs, connection age, network policies, "
        "settings load"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
