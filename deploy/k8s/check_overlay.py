"""The suite's own rules for a rendered overlay (scripts/ci-deploy-checks.sh, after kubernetes-validate).

    python deploy/k8s/check_overlay.py RENDERED.yaml OVERLAY_NAME

Checks what schema validation cannot: native gRPC probes on the right port, GPUs only where they belong,
headless Services, a PDB and an HPA per service, connection ageing, network policies, and that every service
accepts its configuration as its pod would load it (the rendered cir-env ConfigMap plus the container's own
env, and the cir-profile ConfigMap's profile.toml): an unknown or malformed setting fails here, not at start.
The retriever's shape follows its store backend: local = one replica (HPA 1-1, Recreate, the ReadWriteOnce
gallery volume); milvus = stateless replicas (HPA min >= 2, RollingUpdate with maxUnavailable 0, PDB
minAvailable >= 1, no volume of its own, the token variable from a Secret, a liveness probe that does not
follow Milvus, Milvus reachable through the network policies). API keys (components/api-keys, required in
API_KEYS_OVERLAYS): the keys file the setting names is mounted whole from a Secret, the rendered Secret's file
loads as the retriever would load it, and reflection is off. Needs the suite installed (the four services'
settings modules).
"""

from __future__ import annotations

import base64
import importlib
import sys
import tempfile
from pathlib import Path

import yaml

from cir_common.config import load_settings
from cir_common.vocabulary import SERVICES as IDENTITIES

SERVICES = {str(service): identity.default_port for service, identity in IDENTITIES.items()}  # name -> port

GPU_SERVICES = {"encoder", "captioner", "reasoner"}
GPU_OVERLAYS = {"gpu-prod"}  # overlays whose model services get one GPU each
GPU = "nvidia.com/gpu"
# The retriever's store backend each overlay must run (an overlay not listed may run either).
EXPECTED_BACKEND = {"cpu-dev": "local", "gpu-prod": "milvus"}
MILVUS_PORT = 19530
HEALTHCHECK = "/opt/cir/healthcheck.py"  # deploy/docker/healthcheck.py in every image


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
        tls = bool({**env, **_container_env(container)}.get(f"CIR_{service.upper()}_TLS_CERT_FILE"))
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if (
                probe == "livenessProbe"
                and service == "retriever"
                and (tls or _retriever_backend(env, container) == "milvus")
            ):
                continue  # a TCP probe: health follows Milvus (rule below); TLS: check_tls.py's rule
            if tls:
                # kubelet's gRPC probe speaks plaintext only: the image's health check, over TLS.
                command = container.get(probe, {}).get("exec", {}).get("command", [])
                if "grpc" in container.get(probe, {}) or command[:3] != ["python", HEALTHCHECK, service]:
                    errors.append(f"{name}: TLS port, {probe} must run python {HEALTHCHECK} {service}")
                continue
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
        pod_env = {**env, **_container_env(container)}
        errors += _settings_errors(service, pod_env, profile)
        if service == "retriever":
            errors += _retriever_errors(by_kind, deployment, container, pod_env, overlay)
    if len(by_kind.get("NetworkPolicy", {})) < 4:
        errors.append("the NetworkPolicies are missing")
    return errors


def _retriever_backend(env: dict[str, str], container: dict) -> str:
    return {**env, **_container_env(container)}.get("CIR_RETRIEVER_STORE_BACKEND", "local")


def _container_env(container: dict) -> dict[str, str]:
    """The container's own variables; one set from a Secret or a field gets a placeholder value, so that the
    settings check sees its name as the pod would (every CIR_<SERVICE>_* name is read as a setting)."""
    return {e["name"]: e.get("value", "<from valueFrom>") for e in container.get("env", [])}


def _retriever_errors(
    by_kind: dict[str, dict[str, dict]],
    deployment: dict,
    container: dict,
    pod_env: dict[str, str],
    overlay: str,
) -> list[str]:
    """The retriever's replicas, rollout, disruption budget and volumes agree with its store backend."""
    name = "cir-retriever"
    backend = pod_env.get("CIR_RETRIEVER_STORE_BACKEND", "local")
    errors = []
    expected = EXPECTED_BACKEND.get(overlay)
    if expected and backend != expected:
        errors.append(f"{name}: store backend {backend!r} in overlay {overlay}, expected {expected!r}")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    hpa = by_kind.get("HorizontalPodAutoscaler", {}).get(name, {}).get("spec", {})
    pdb = by_kind.get("PodDisruptionBudget", {}).get(name, {}).get("spec", {})
    strategy = spec.get("strategy", {})
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    mounted = {m["name"] for m in container.get("volumeMounts", [])}
    if "replicas" in spec:
        errors.append(f"{name}: replicas must be left to the HPA")
    if backend == "local":
        # SQLite on a ReadWriteOnce volume, search matrices in the process: exactly one replica.
        if (hpa.get("minReplicas"), hpa.get("maxReplicas")) != (1, 1):
            errors.append(f"{name}: local store, the HPA must pin 1 replica (min 1, max 1), not {hpa}")
        if strategy.get("type") != "Recreate":
            errors.append(
                f"{name}: local store, strategy must be Recreate (one pod holds the ReadWriteOnce volume)"
            )
        pvc = by_kind.get("PersistentVolumeClaim", {}).get("cir-gallery")
        if not mounted & {volume for volume, claim in claims.items() if claim == "cir-gallery"}:
            errors.append(f"{name}: local store, the gallery volume (PVC cir-gallery) must be mounted")
        if pvc is None or pvc["spec"].get("accessModes") != ["ReadWriteOnce"]:
            errors.append("cir-gallery: local store, the PVC must exist and be ReadWriteOnce")
    elif backend == "milvus":
        min_replicas, max_replicas = hpa.get("minReplicas", 1), hpa.get("maxReplicas", 0)
        if min_replicas < 2 or max_replicas < min_replicas:
            errors.append(f"{name}: milvus store, the HPA must run 2..N replicas (min >= 2), not {hpa}")
        rolling = strategy.get("rollingUpdate", {})
        if strategy.get("type") != "RollingUpdate" or rolling.get("maxUnavailable") != 0:
            errors.append(f"{name}: milvus store, strategy must be RollingUpdate with maxUnavailable 0")
        if pdb.get("minAvailable", 0) < 1 or "maxUnavailable" in pdb:
            errors.append(f"{name}: milvus store, the PDB must keep minAvailable >= 1, not {pdb}")
        if claims:
            errors.append(f"{name}: milvus store, the pod must mount no PersistentVolumeClaim: {claims}")
        if "cir-gallery" in by_kind.get("PersistentVolumeClaim", {}):
            errors.append("cir-gallery: milvus store, the gallery PVC must not be rendered")
        errors += _milvus_connection_errors(by_kind, deployment, container, pod_env)
    else:
        errors.append(f"{name}: unknown store backend {backend!r}")
    errors += _api_keys_errors(by_kind, pod, container, pod_env, overlay)
    return errors


def _milvus_connection_errors(
    by_kind: dict[str, dict[str, dict]], deployment: dict, container: dict, pod_env: dict[str, str]
) -> list[str]:
    name = "cir-retriever"
    errors = []
    uri = pod_env.get("CIR_RETRIEVER_MILVUS_URI", "")
    if not uri or any(host in uri for host in ("127.0.0.1", "localhost")):
        errors.append(f"{name}: CIR_RETRIEVER_MILVUS_URI must name the Milvus Service, not {uri!r}")
    token_env = pod_env.get("CIR_RETRIEVER_MILVUS_TOKEN_ENV", "MILVUS_TOKEN")
    token = next((e for e in container.get("env", []) if e["name"] == token_env), None)
    if token is None or "secretKeyRef" not in token.get("valueFrom", {}):
        errors.append(f"{name}: the token variable {token_env} must come from a Secret (secretKeyRef)")
    # Readiness follows the Milvus connection (the service's gRPC health name does); liveness must not,
    # or an outage of Milvus would restart every replica instead of taking them out of rotation.
    liveness, port = container.get("livenessProbe", {}), SERVICES["retriever"]
    if "grpc" in liveness or liveness.get("tcpSocket", {}).get("port") not in (port, "grpc"):
        errors.append(
            f"{name}: milvus store, liveness must be a TCP probe on {port} (gRPC health follows Milvus)"
        )
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for policy_name, policy in by_kind.get("NetworkPolicy", {}).items():
        spec = policy["spec"]
        if "Egress" not in spec.get("policyTypes", []) or not _selects(spec.get("podSelector", {}), labels):
            continue
        if not any(_allows_port(rule, MILVUS_PORT) for rule in spec.get("egress", [])):
            errors.append(
                f"NetworkPolicy {policy_name} restricts the retriever's egress without TCP {MILVUS_PORT}"
            )
    return errors


API_KEYS_OVERLAYS = {"gpu-prod"}  # overlays whose public API must require API keys (components/api-keys)


def _api_keys_errors(
    by_kind: dict[str, dict[str, dict]], pod: dict, container: dict, pod_env: dict[str, str], overlay: str
) -> list[str]:
    """The keys file (CIR_RETRIEVER_API_KEYS_FILE) comes whole from a Secret, and what it holds loads."""
    from cir_common.errors import ConfigError
    from cir_retriever.auth import parse_keys

    name, setting = "cir-retriever", "CIR_RETRIEVER_API_KEYS_FILE"
    path = pod_env.get(setting, "")
    if not path:
        if overlay in API_KEYS_OVERLAYS:
            return [f"{name}: overlay {overlay} must require API keys: add components/api-keys ({setting})"]
        return []
    errors = []
    reflection = pod_env.get("CIR_RETRIEVER_REFLECTION", "true").strip().lower()
    if overlay in API_KEYS_OVERLAYS and reflection not in ("0", "false", "no", "off"):
        errors.append(f"{name}: overlay {overlay} serves API keys, CIR_RETRIEVER_REFLECTION must be false")
    folder, _, file_name = path.rpartition("/")
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == folder), None)
    if mount is None or "subPath" in mount:
        # A subPath mount is never updated by kubelet: a revoked key would stay valid until a restart.
        return [*errors, f"{name}: {setting}={path}: mount a Secret at {folder} (whole, no subPath)"]
    volume = next((v for v in pod.get("volumes", []) if v["name"] == mount["name"]), {})
    secret = volume.get("secret")
    if secret is None or secret.get("optional"):
        return [*errors, f"{name}: the volume at {folder} must be a Secret, not optional (no keys, no start)"]
    items = secret.get("items")
    key = next((i["key"] for i in items if i["path"] == file_name), None) if items else file_name
    rendered = by_kind.get("Secret", {}).get(secret["secretName"])
    text = _secret_text(rendered, key) if rendered is not None and key is not None else None
    if key is None or (rendered is not None and text is None):
        return [*errors, f"Secret {secret['secretName']}: no {file_name} in it ({setting}={path})"]
    if text is None:
        return errors  # a Secret created apart from the overlay (kubectl create secret): nothing to read
    try:
        parse_keys(text, source=f"Secret {secret['secretName']}, {file_name}")
    except ConfigError as error:
        errors.append(error.message)
    return errors


def _secret_text(secret: dict, key: str) -> str | None:
    if key in secret.get("stringData", {}):
        return secret["stringData"][key]
    if key in secret.get("data", {}):
        return base64.b64decode(secret["data"][key]).decode("utf-8")
    return None


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        value, operator = labels.get(expression["key"]), expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


def _allows_port(rule: dict, port: int) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True  # no ports: every port
    return any(
        p.get("protocol", "TCP") == "TCP"
        and (
            "port" not in p
            or (isinstance(p["port"], int) and p["port"] <= port <= p.get("endPort", p["port"]))
        )
        for p in ports
    )


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
        f"settings load, retriever on the {_backend(docs)} store"
    )
    return 0


def _backend(docs: list[dict]) -> str:
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    return _generated(config_maps, "cir-env")["data"].get("CIR_RETRIEVER_STORE_BACKEND", "local")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
