"""The rules for the Milvus that the retriever's milvus store runs on (scripts/ci-deploy-checks.sh).

    python deploy/milvus/check_milvus.py [--values VALUES] [--cr CR] [--component KUSTOMIZATION]

(defaults: deploy/milvus/values.yaml, deploy/milvus/milvus-cr.yaml,
deploy/k8s/components/milvus-store/kustomization.yaml)

Neither file can be validated by kubernetes-validate (Helm values are no Kubernetes object; the Milvus custom
resource has no schema there), and no Helm chart or CRD is fetched in CI. So this checks what matters for the
suite, on both ways of installing Milvus:
- the Helm values (chart milvus/milvus 4.2.x, Milvus 2.5.x): only top-level keys the chart has (a misspelt
  key is silently ignored by Helm), cluster mode, authorization on and five vector fields per collection
  (InstructCIR's targets are the fifth) in user.yaml, the root password and the
  MinIO keys from Secrets (no literal secret anywhere), etcd / MinIO / Pulsar on persistent volumes, one
  message queue (Pulsar 3; Woodpecker is Milvus 2.6's), Milvus 2.5 images, two proxies at least;
- the Milvus Operator resource (milvus.io/v1beta1 Milvus): its required top-level fields and spec keys,
  cluster mode, authorization on, five vector fields, the root password from a Secret, persistent dependencies
  kept on deletion,
  Pulsar as the message stream, a Milvus 2.5 image;
- that both expose the proxy Service the component's CIR_RETRIEVER_MILVUS_URI names (host
  <service>.<namespace>.svc, port 19530), and that the component reads the token from a variable outside the
  CIR_RETRIEVER_ prefix;
- where kubernetes-validate is installed (CI installs it), the Kubernetes types inside both files: every
  component's env list and resources, put into a Pod and validated --strict against --kube-version.
Needs PyYAML (and kubernetes-validate for the last check, which is skipped and said so without it).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

ROOT = Path(__file__).resolve().parents[2]
MILVUS_PORT = 19530
MILVUS_SERIES = "2.5."
# Vector fields per collection: t_v, the caption mean, the caption slots, the raw image feature, and the
# InstructCIR targets (cir_retriever.gallery.milvus); Milvus's proxy.maxVectorFieldNum defaults to 4.
MIN_VECTOR_FIELDS = 5
# Top-level keys of the milvus/milvus chart's values in the 4.2.x series.
CHART_KEYS = {
    "nameOverride", "fullnameOverride", "cluster", "image", "nodeSelector", "tolerations", "affinity",
    "containerSecurityContext", "securityContext", "topologySpreadConstraints", "labels", "annotations",
    "volumes", "volumeMounts", "streaming", "customConfigMap", "extraConfigFiles", "service", "ingress",
    "serviceAccount", "metrics", "livenessProbe", "readinessProbe", "log", "heaptrack", "standalone", "proxy",
    "rootCoordinator", "queryCoordinator", "queryNode", "indexCoordinator", "indexNode", "dataCoordinator",
    "dataNode", "mixCoordinator", "streamingNode", "attu", "minio", "etcd", "pulsarv3", "pulsar", "kafka",
    "woodpecker", "externalS3", "externalGcs", "externalEtcd", "externalPulsar", "externalKafka", "tei",
}  # fmt: skip
# Milvus components of the chart in cluster mode with a mix coordinator.
CHART_COMPONENTS = ("proxy", "mixCoordinator", "queryNode", "dataNode", "indexNode")
MESSAGE_QUEUES = ("pulsarv3", "pulsar", "kafka", "woodpecker")
CR_SPEC_KEYS = {"mode", "components", "dependencies", "config", "hookConfig"}
CR_DEPENDENCIES = ("etcd", "storage", "pulsar")
SECRET_NAMES = re.compile(r"PASSWORD|SECRET|ACCESSKEY|TOKEN", re.IGNORECASE)


def check_values(values: dict[str, Any], header: str) -> tuple[list[str], tuple[str, str | None, int]]:
    """Errors in the Helm values, and the (Service name, namespace, port) they give the proxy."""
    errors = []
    unknown = sorted(set(values) - CHART_KEYS)
    if unknown:
        errors.append(f"values: top-level keys the chart does not have (Helm would ignore them): {unknown}")
    if _get(values, "cluster.enabled") is not True:
        errors.append("values: cluster.enabled must be true (cluster mode)")
    if _get(values, "streaming.enabled") is True:
        errors.append("values: streaming.enabled is a preview in Milvus 2.5; leave it false")
    tag = str(_get(values, "image.all.tag") or "")
    if not tag.lstrip("v").startswith(MILVUS_SERIES):
        errors.append(f"values: image.all.tag {tag!r} is not Milvus {MILVUS_SERIES}x (chart 4.2.x)")
    user_yaml = yaml.safe_load(_get(values, "extraConfigFiles.user.yaml") or "") or {}
    if int(_get(user_yaml, "proxy.maxVectorFieldNum") or 4) < MIN_VECTOR_FIELDS:
        errors.append(
            f"values: extraConfigFiles user.yaml must set proxy.maxVectorFieldNum >= {MIN_VECTOR_FIELDS}"
        )
    if _get(user_yaml, "common.security.authorizationEnabled") is not True:
        errors.append(
            "values: extraConfigFiles user.yaml must set common.security.authorizationEnabled: true"
        )
    for component in CHART_COMPONENTS:
        if values.get(component, {}).get("enabled", True) is not True:
            errors.append(f"values: {component} must be enabled")
    for component in ("rootCoordinator", "queryCoordinator", "indexCoordinator", "dataCoordinator"):
        if values.get(component, {}).get("enabled") is not False:
            errors.append(f"values: {component} must be disabled (the mix coordinator runs them)")
    if int(_get(values, "proxy.replicas") or 0) < 2:
        errors.append("values: proxy.replicas must be >= 2 (every request passes a proxy)")
    root = _env(values["mixCoordinator"].get("extraEnv"), "COMMON_SECURITY_DEFAULTROOTPASSWORD")
    if not root or "secretKeyRef" not in root.get("valueFrom", {}):
        errors.append(
            "values: mixCoordinator.extraEnv must set COMMON_SECURITY_DEFAULTROOTPASSWORD from a Secret"
        )
    errors += _literal_secrets(values, "values")
    # Dependencies on persistent volumes.
    if not (_get(values, "etcd.enabled") and _get(values, "etcd.persistence.enabled")):
        errors.append("values: etcd must be enabled with persistence.enabled: true")
    if int(_get(values, "etcd.replicaCount") or 0) < 3:
        errors.append("values: etcd.replicaCount must be >= 3 (a quorum survives one loss)")
    if not (_get(values, "minio.enabled") and _get(values, "minio.persistence.enabled")):
        errors.append("values: minio must be enabled with persistence.enabled: true")
    if _get(values, "minio.mode") != "distributed":
        errors.append("values: minio.mode must be distributed")
    minio_secret = _get(values, "minio.existingSecret")
    if not minio_secret or _get(values, "minio.accessKey") or _get(values, "minio.secretKey"):
        errors.append("values: MinIO keys must come from minio.existingSecret (accessKey / secretKey empty)")
    for component in CHART_COMPONENTS:
        env = values.get(component, {}).get("extraEnv")
        for name in ("MINIO_ACCESSKEYID", "MINIO_SECRETACCESSKEY"):
            var = _env(env, name)
            if _get(var or {}, "valueFrom.secretKeyRef.name") != minio_secret:
                errors.append(f"values: {component}.extraEnv must set {name} from the Secret {minio_secret}")
    queues = [queue for queue in MESSAGE_QUEUES if _get(values, f"{queue}.enabled")]
    if queues != ["pulsarv3"]:
        errors.append(
            f"values: exactly one message queue, pulsarv3, must be enabled for Milvus 2.5, not {queues}"
        )
    if not (_get(values, "pulsarv3.persistence") and _get(values, "pulsarv3.volumes.persistence")):
        errors.append("values: pulsarv3 persistence and volumes.persistence must be true")
    # The proxy Service: <fullnameOverride> (else <release>-milvus), in the namespace of the install command.
    if _get(values, "service.type") not in (None, "ClusterIP"):
        errors.append("values: service.type must be ClusterIP (the retriever is in the cluster)")
    name = values.get("fullnameOverride")
    if not name:
        errors.append("values: fullnameOverride must fix the Service name the retriever's URI uses")
    namespace = _install_namespace(header)
    if namespace is None:
        errors.append("values: the header must show the install command (helm install ... -n NAMESPACE)")
    return errors, (name or "", namespace, int(_get(values, "service.port") or MILVUS_PORT))


def check_cr(cr: dict[str, Any]) -> tuple[list[str], tuple[str, str | None, int]]:
    """Errors in the Milvus custom resource, and the (Service name, namespace, port) the operator gives it."""
    errors = []
    if cr.get("apiVersion") != "milvus.io/v1beta1" or cr.get("kind") != "Milvus":
        errors.append("cr: must be apiVersion milvus.io/v1beta1, kind Milvus")
    metadata, spec = cr.get("metadata") or {}, cr.get("spec")
    if not metadata.get("name") or not metadata.get("namespace"):
        errors.append("cr: metadata.name and metadata.namespace are required")
    if not isinstance(spec, dict):
        return [*errors, "cr: spec is required"], ("", None, MILVUS_PORT)
    unknown = sorted(set(spec) - CR_SPEC_KEYS)
    if unknown:
        errors.append(f"cr: spec keys the CRD does not have: {unknown}")
    if spec.get("mode") != "cluster":
        errors.append("cr: spec.mode must be cluster")
    if _get(spec, "config.common.security.authorizationEnabled") is not True:
        errors.append("cr: spec.config.common.security.authorizationEnabled must be true")
    if int(_get(spec, "config.proxy.maxVectorFieldNum") or 4) < MIN_VECTOR_FIELDS:
        errors.append(f"cr: spec.config.proxy.maxVectorFieldNum must be >= {MIN_VECTOR_FIELDS}")
    components = spec.get("components") or {}
    image = str(components.get("image") or "")
    if ":" not in image or not image.rsplit(":", 1)[1].lstrip("v").startswith(MILVUS_SERIES):
        errors.append(f"cr: spec.components.image {image!r} is not a Milvus {MILVUS_SERIES}x image")
    root = _env(_get(components, "mixCoord.env"), "COMMON_SECURITY_DEFAULTROOTPASSWORD")
    if not root or "secretKeyRef" not in root.get("valueFrom", {}):
        errors.append(
            "cr: components.mixCoord.env must set COMMON_SECURITY_DEFAULTROOTPASSWORD from a Secret"
        )
    errors += _literal_secrets(cr, "cr")
    if int(_get(components, "proxy.replicas") or 0) < 2:
        errors.append("cr: components.proxy.replicas must be >= 2")
    dependencies = spec.get("dependencies") or {}
    for dependency in CR_DEPENDENCIES:
        in_cluster = _get(dependencies, f"{dependency}.inCluster")
        if not isinstance(in_cluster, dict):
            errors.append(f"cr: dependencies.{dependency}.inCluster is required (deployed with Milvus)")
            continue
        if in_cluster.get("deletionPolicy") != "Retain" or in_cluster.get("pvcDeletion"):
            errors.append(
                f"cr: dependencies.{dependency} must be kept on deletion (Retain, pvcDeletion false)"
            )
        persistent = (
            _get(in_cluster, "values.volumes.persistence")
            if dependency == "pulsar"
            else _get(in_cluster, "values.persistence.enabled")
        )
        if persistent is not True:
            errors.append(f"cr: dependencies.{dependency} must run on persistent volumes")
    if dependencies.get("msgStreamType") != "pulsar":
        errors.append("cr: dependencies.msgStreamType must be pulsar for Milvus 2.5 in cluster mode")
    port = int(_get(components, "proxy.port") or MILVUS_PORT)
    return errors, (f"{metadata.get('name')}-milvus", metadata.get("namespace"), port)


def check_component(component: dict[str, Any]) -> tuple[list[str], tuple[str, str | None, int]]:
    """Errors in the component's settings, and the (Service name, namespace, port) its URI names."""
    errors = []
    literals = {}
    for generator in component.get("configMapGenerator", []):
        if generator.get("name") == "cir-env":
            literals.update(item.split("=", 1) for item in generator.get("literals", []))
    if literals.get("CIR_RETRIEVER_STORE_BACKEND") != "milvus":
        errors.append("component: cir-env must set CIR_RETRIEVER_STORE_BACKEND=milvus")
    token_env = literals.get("CIR_RETRIEVER_MILVUS_TOKEN_ENV", "MILVUS_TOKEN")
    if token_env.startswith("CIR_RETRIEVER_"):
        errors.append(
            f"component: the token variable {token_env} would be read as a retriever setting; name one "
            "outside CIR_RETRIEVER_ in CIR_RETRIEVER_MILVUS_TOKEN_ENV"
        )
    uri = urlsplit(literals.get("CIR_RETRIEVER_MILVUS_URI", ""))
    host = uri.hostname or ""
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.cluster\.local)?", host)
    if uri.scheme not in ("http", "https") or not match:
        errors.append(
            f"component: CIR_RETRIEVER_MILVUS_URI must be http://<service>.<namespace>.svc:PORT, not {uri}"
        )
        return errors, ("", None, 0)
    return errors, (match.group(1), match.group(2), uri.port or MILVUS_PORT)


def core_type_errors(values: dict[str, Any], cr: dict[str, Any], versions: list[str]) -> list[str] | None:
    """Each component's env and resources (Kubernetes types in both files) validated as a Pod's container,
    strict; None when kubernetes-validate is not installed."""
    try:
        import kubernetes_validate
    except ImportError:
        return None
    components = (cr.get("spec") or {}).get("components") or {}
    parts = {f"values {name}": (values.get(name) or {}, "extraEnv") for name in CHART_COMPONENTS}
    parts["cr components"] = (components, "env")
    parts |= {
        f"cr components.{name}": (spec, "env") for name, spec in components.items() if isinstance(spec, dict)
    }
    errors = []
    for where, (spec, env_key) in parts.items():
        container = {"name": "milvus", "image": "milvus"}
        for key, value in (("env", spec.get(env_key)), ("resources", spec.get("resources"))):
            if value is not None:
                container[key] = value
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "check"},
            "spec": {"containers": [container]},
        }
        for version in versions:
            try:
                kubernetes_validate.validate(pod, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                errors.append(f"{where}: env/resources invalid for Kubernetes {version}: {error.message}")
    return errors


def _install_namespace(header: str) -> str | None:
    """The namespace of the `helm install` command shown in the values file's header comment."""
    for line in header.splitlines():
        words = shlex.split(line.lstrip("# ").split("&&")[-1]) if "helm install" in line else []
        for flag in ("-n", "--namespace"):
            if flag in words[:-1]:
                return words[words.index(flag) + 1]
    return None


def _get(data: Any, path: str) -> Any:
    """data["a"]["b.c"] for the dotted path "a.b.c": the longest keys first (user.yaml has a dot)."""
    if not path:
        return data
    if not isinstance(data, dict):
        return None
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        key = ".".join(parts[:cut])
        if key in data:
            return _get(data[key], ".".join(parts[cut:]))
    return None


def _env(env: Any, name: str) -> dict | None:
    return next((e for e in env or [] if isinstance(e, dict) and e.get("name") == name), None)


def _literal_secrets(data: Any, where: str, path: str = "") -> list[str]:
    """Every env entry (a dict with name) whose name looks like a secret must take its value from a Secret."""
    errors = []
    if isinstance(data, dict):
        if isinstance(data.get("name"), str) and SECRET_NAMES.search(data["name"]) and "value" in data:
            errors.append(f"{where}: {path}: {data['name']} has a literal value; take it from a Secret")
        for key, value in data.items():
            errors += _literal_secrets(value, where, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for index, item in enumerate(data):
            errors += _literal_secrets(item, where, f"{path}[{index}]")
    return errors


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--values", type=Path, default=ROOT / "deploy/milvus/values.yaml")
    parser.add_argument("--cr", type=Path, default=ROOT / "deploy/milvus/milvus-cr.yaml")
    parser.add_argument(
        "--component", type=Path, default=ROOT / "deploy/k8s/components/milvus-store/kustomization.yaml"
    )
    parser.add_argument(
        "--kube-version", action="append", help="Kubernetes version(s) for the type check (default 1.30.0)"
    )
    args = parser.parse_args(argv)
    versions = args.kube_version or ["1.30.0"]
    paths = {"values": args.values, "cr": args.cr, "component": args.component}
    texts = {name: path.read_text(encoding="utf-8") for name, path in paths.items()}
    try:
        values, component = yaml.safe_load(texts["values"]), yaml.safe_load(texts["component"])
        crs = [doc for doc in yaml.safe_load_all(texts["cr"]) if doc]
    except yaml.YAMLError as error:
        print(f"not YAML: {error}", file=sys.stderr)
        return 1
    if len(crs) != 1:
        print(f"{args.cr}: expected one Milvus resource, found {len(crs)} documents", file=sys.stderr)
        return 1
    errors, helm_service = check_values(values, texts["values"])
    cr_errors, cr_service = check_cr(crs[0])
    component_errors, wanted = check_component(component)
    errors += cr_errors + component_errors
    type_errors = core_type_errors(values, crs[0], versions)
    errors += type_errors or []
    for source, service in (("Helm values", helm_service), ("Milvus resource", cr_service)):
        if not component_errors and service != wanted:
            errors.append(
                f"{source}: the proxy Service is {service[0]}.{service[1]}.svc:{service[2]}, but the "
                f"component's CIR_RETRIEVER_MILVUS_URI names {wanted[0]}.{wanted[1]}.svc:{wanted[2]}"
            )
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(
        "ok  milvus: Helm values and Milvus resource: cluster mode, authorization on, five vector fields, "
        "secrets from Secrets, "
        "persistent etcd/MinIO/Pulsar; both serve "
        f"{wanted[0]}.{wanted[1]}.svc:{wanted[2]} (the component's URI); "
        + (
            f"env and resources valid for Kubernetes {', '.join(versions)}"
            if type_errors is not None
            else "SKIPPED the env/resources type check (kubernetes-validate is not installed)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
