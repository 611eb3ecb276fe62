"""The rules for TLS in a rendered overlay: cert-manager resources and their wiring (ci-deploy-checks.sh).

    python deploy/k8s/check_tls.py RENDERED.yaml OVERLAY_NAME

kubernetes-validate has no schema for cert-manager's kinds (it warns and passes them), and CI fetches no CRD.
So this checks, offline:
- the cert-manager resources (cert-manager.io/v1 Issuer, ClusterIssuer, Certificate) against the fields of
  their CRDs that matter here: known spec keys only (a misspelt key would be dropped by the API server), the
  required ones, key usages, private key algorithm / size / rotation policy, durations, IP addresses; one
  kind of issuer per Issuer; every issuerRef resolves, and a CA Issuer's Secret is a CA Certificate;
- the suite's wiring (components/tls): every service with TLS reads its certificate and key from a mounted
  Secret that a Certificate writes (no subPath, or renewals never reach the pod), for server and client auth,
  naming the Service (and namespace) and 127.0.0.1 for the exec probes; the model services require client
  certificates (mTLS) from the same CA the retriever's downstream channels present and trust; the probes can
  verify the port (a CA for them); the retriever's liveness is a TCP probe; the cache URL is rediss:// with a
  password taken from a Secret, never written out, and the Redis it names serves TLS with that password.
An overlay without TLS (no service sets its TLS_CERT_FILE, no cert-manager resource) passes as plaintext.
Needs PyYAML.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import PurePosixPath
from typing import Any

import yaml

API_VERSION = "cert-manager.io/v1"
SERVICES = {"encoder": 50051, "captioner": 50052, "reasoner": 50053, "retriever": 50050}
MODEL_SERVICES = ("encoder", "captioner", "reasoner")
# cert-manager v1 CRDs (v1.12 .. v1.17): the spec fields and enumerations used or misused here.
CERTIFICATE_SPEC_KEYS = {
    "additionalOutputFormats", "commonName", "dnsNames", "duration", "emailAddresses",
    "encodeUsagesInRequest", "ipAddresses", "isCA", "issuerRef", "keystores", "literalSubject",
    "nameConstraints", "otherNames", "privateKey", "renewBefore", "renewBeforePercentage",
    "revisionHistoryLimit", "secretName", "secretTemplate", "subject", "uris", "usages",
}  # fmt: skip
ISSUER_TYPES = {"acme", "ca", "selfSigned", "vault", "venafi"}
KEY_USAGES = {
    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any", "server auth",
    "client auth", "code signing", "email protection", "s/mime", "ipsec end system", "ipsec tunnel",
    "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc",
}  # fmt: skip
PRIVATE_KEY_KEYS = {"algorithm", "encoding", "rotationPolicy", "size"}
KEY_SIZES = {"ECDSA": {256, 384, 521}, "Ed25519": {None}}
DURATION = re.compile(r"^(\d+(\.\d+)?(h|m|s|ms))+$")
ENV_REFERENCE = re.compile(r"^\$\(([A-Za-z_][A-Za-z0-9_]*)\)$")


def check(docs: list[dict[str, Any]], overlay: str) -> tuple[list[str], bool]:
    """The errors, and whether the overlay runs TLS at all."""
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    env = _generated(by_kind.get("ConfigMap", {}), "cir-env")["data"]
    managed = [doc for doc in docs if str(doc.get("apiVersion", "")).startswith("cert-manager.io/")]
    pods = {}
    for service in SERVICES:
        deployment = by_kind.get("Deployment", {}).get(f"cir-{service}")
        if deployment is not None:
            pod = deployment["spec"]["template"]["spec"]
            container = next(c for c in pod["containers"] if c["name"] == service)
            pods[service] = (pod, container, {**env, **{e["name"]: e for e in container.get("env", [])}})
    tls = any(_value(pod_env, f"CIR_{s.upper()}_TLS_CERT_FILE") for s, (_, _, pod_env) in pods.items())
    if not tls and not managed:
        return [], False
    errors = [error for doc in managed for error in _resource_errors(doc)]
    certificates = {doc["spec"].get("secretName"): doc for doc in managed if doc["kind"] == "Certificate"}
    errors += _issuer_errors(managed, certificates)
    issuers: dict[str, str | None] = {}
    downstream = None
    for service, (pod, container, pod_env) in pods.items():
        service_errors, issuers[service], client_issuer = _service_errors(
            service, pod, container, pod_env, certificates, overlay
        )
        errors += service_errors
        downstream = downstream or client_issuer
    for service in MODEL_SERVICES:
        if downstream and issuers.get(service) and issuers[service] != downstream:
            errors.append(
                f"cir-{service}: its certificate's issuer {issuers[service]} is not the one the retriever's "
                f"client certificate comes from ({downstream}): mTLS between them fails"
            )
    errors += _cache_errors(by_kind, pods, certificates)
    return errors, True


def _resource_errors(doc: dict[str, Any]) -> list[str]:
    kind, name = doc["kind"], doc["metadata"]["name"]
    where = f"{kind} {name}"
    if doc.get("apiVersion") != API_VERSION:
        return [f"{where}: apiVersion must be {API_VERSION}"]
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return [f"{where}: spec is required"]
    if kind in ("Issuer", "ClusterIssuer"):
        types = set(spec) & ISSUER_TYPES
        unknown = sorted(set(spec) - ISSUER_TYPES)
        errors = [f"{where}: spec keys the CRD does not have: {unknown}"] if unknown else []
        if len(types) != 1:
            errors.append(f"{where}: exactly one issuer type of {sorted(ISSUER_TYPES)}, not {sorted(types)}")
        if "ca" in spec and not (spec["ca"] or {}).get("secretName"):
            errors.append(f"{where}: spec.ca.secretName is required")
        return errors
    if kind != "Certificate":
        return [f"{where}: a cert-manager kind this suite does not use"]
    errors = []
    unknown = sorted(set(spec) - CERTIFICATE_SPEC_KEYS)
    if unknown:
        errors.append(f"{where}: spec keys the CRD does not have: {unknown}")
    if not spec.get("secretName") or not (spec.get("issuerRef") or {}).get("name"):
        errors.append(f"{where}: spec.secretName and spec.issuerRef.name are required")
    ref = spec.get("issuerRef") or {}
    if set(ref) - {"name", "kind", "group"} or ref.get("kind", "Issuer") not in ("Issuer", "ClusterIssuer"):
        errors.append(f"{where}: issuerRef takes name, kind (Issuer or ClusterIssuer) and group: {ref}")
    if ref.get("group", "cert-manager.io") != "cert-manager.io":
        errors.append(f"{where}: issuerRef.group {ref['group']!r} is not cert-manager.io")
    bad_usages = sorted(set(spec.get("usages") or []) - KEY_USAGES)
    if bad_usages:
        errors.append(f"{where}: usages cert-manager does not know: {bad_usages}")
    key = spec.get("privateKey") or {}
    if set(key) - PRIVATE_KEY_KEYS:
        errors.append(
            f"{where}: privateKey keys the CRD does not have: {sorted(set(key) - PRIVATE_KEY_KEYS)}"
        )
    algorithm = key.get("algorithm", "RSA")
    if algorithm == "RSA":
        if int(key.get("size", 2048)) < 2048:
            errors.append(f"{where}: an RSA key needs at least 2048 bits")
    elif algorithm in KEY_SIZES:
        if key.get("size") not in KEY_SIZES[algorithm] and not (algorithm == "ECDSA" and "size" not in key):
            errors.append(f"{where}: privateKey.size {key.get('size')} does not fit {algorithm}")
    else:
        errors.append(f"{where}: privateKey.algorithm {algorithm!r} is not RSA, ECDSA or Ed25519")
    if key.get("rotationPolicy", "Never") not in ("Never", "Always"):
        errors.append(f"{where}: privateKey.rotationPolicy must be Never or Always")
    if key.get("encoding", "PKCS1") not in ("PKCS1", "PKCS8"):
        errors.append(f"{where}: privateKey.encoding must be PKCS1 or PKCS8")
    durations = {}
    for field in ("duration", "renewBefore"):
        if field in spec:
            if not DURATION.match(str(spec[field])):
                errors.append(f"{where}: {field} {spec[field]!r} is not a Go duration (e.g. 2160h)")
            else:
                durations[field] = _hours(str(spec[field]))
    if durations.get("duration", 2160) < 1:
        errors.append(f"{where}: duration must be at least 1h (cert-manager's minimum)")
    if durations.get("renewBefore", 0) >= durations.get("duration", 2160):
        errors.append(f"{where}: renewBefore must be shorter than duration")
    for address in spec.get("ipAddresses") or []:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            errors.append(f"{where}: ipAddresses entry {address!r} is not an IP address")
    if "isCA" in spec and not isinstance(spec["isCA"], bool):
        errors.append(f"{where}: isCA must be true or false")
    return errors


def _issuer_errors(managed: list[dict[str, Any]], certificates: dict[str, dict[str, Any]]) -> list[str]:
    """Every issuerRef resolves (a ClusterIssuer may live outside the overlay); a CA Issuer's Secret is
    written by a CA Certificate here, in its namespace."""
    issuers = {
        (doc["kind"], doc["metadata"].get("namespace"), doc["metadata"]["name"]): doc for doc in managed
    }
    errors = []
    for doc in managed:
        namespace = doc["metadata"].get("namespace")
        if doc["kind"] == "Certificate":
            ref = doc["spec"].get("issuerRef") or {}
            kind = ref.get("kind", "Issuer")
            if kind == "Issuer" and ("Issuer", namespace, ref.get("name")) not in issuers:
                errors.append(
                    f"Certificate {doc['metadata']['name']}: no Issuer {ref.get('name')} in {namespace}"
                )
        elif doc["kind"] == "Issuer" and "ca" in doc.get("spec", {}):
            secret = doc["spec"]["ca"].get("secretName")
            ca = certificates.get(secret)
            if (
                ca is None
                or ca["metadata"].get("namespace") != namespace
                or ca["spec"].get("isCA") is not True
            ):
                errors.append(
                    f"Issuer {doc['metadata']['name']}: its CA Secret {secret} must come from a Certificate "
                    f"with isCA: true in namespace {namespace}"
                )
    return errors


def _service_errors(
    service: str,
    pod: dict[str, Any],
    container: dict[str, Any],
    pod_env: dict[str, Any],
    certificates: dict[str, dict[str, Any]],
    overlay: str,
) -> tuple[list[str], str | None, str | None]:
    """A service's TLS wiring, its certificate's issuer, and (the retriever) its client certificate's."""
    name, prefix, port = f"cir-{service}", f"CIR_{service.upper()}_", SERVICES[service]
    cert_file = _value(pod_env, f"{prefix}TLS_CERT_FILE")
    if not cert_file:
        return [f"{name}: no TLS ({prefix}TLS_CERT_FILE) while the overlay {overlay} runs TLS"], None, None
    mounts = _secret_mounts(pod, container)
    errors: list[str] = []
    certificate = _certificate_of(name, cert_file, "tls.crt", mounts, certificates, errors)
    _certificate_of(name, _value(pod_env, f"{prefix}TLS_KEY_FILE"), "tls.key", mounts, certificates, errors)
    issuer = client_issuer = None
    if certificate is not None:
        spec, namespace = certificate["spec"], certificate["metadata"].get("namespace")
        issuer = str((spec.get("issuerRef") or {}).get("name"))
        usages = set(spec.get("usages") or [])
        if not {"server auth", "client auth"} <= usages:
            errors.append(
                f"{name}: its Certificate needs the usages server auth and client auth (probes, calls)"
            )
        dns = spec.get("dnsNames") or []
        if name not in dns:
            errors.append(f"{name}: its Certificate must name the Service {name} (dnsNames)")
        wrong = [d for d in dns if ".svc" in d and not d.startswith(f"{name}.{namespace}.svc")]
        if wrong:
            errors.append(f"{name}: dnsNames {wrong} do not name namespace {namespace}")
        if "127.0.0.1" not in (spec.get("ipAddresses") or []) and "localhost" not in dns:
            errors.append(f"{name}: its Certificate must name 127.0.0.1 or localhost (the exec probes)")
    client_ca = _value(pod_env, f"{prefix}TLS_CLIENT_CA_FILE")
    if service in MODEL_SERVICES:
        if not client_ca:
            errors.append(
                f"{name}: mTLS is off: set {prefix}TLS_CLIENT_CA_FILE (only the retriever may call)"
            )
        else:
            _certificate_of(name, client_ca, "ca.crt", mounts, certificates, errors)
    if not (client_ca or _value(pod_env, "CIR_TLS_CA_FILE")):
        errors.append(f"{name}: the exec probes need a CA: set CIR_TLS_CA_FILE (the CA of its certificate)")
    liveness = container.get("livenessProbe", {})
    if service == "retriever" and ("grpc" in liveness or liveness.get("tcpSocket", {}).get("port") != port):
        errors.append(f"{name}: TLS port, liveness must be a TCP probe on {port}")
    if service == "retriever":
        downstream = {
            part: _value(pod_env, f"{prefix}DOWNSTREAM_TLS_{part.upper()}_FILE")
            for part in ("ca", "cert", "key")
        }
        if not all(downstream.values()):
            errors.append(f"{name}: set {prefix}DOWNSTREAM_TLS_CA_FILE, _CERT_FILE and _KEY_FILE (mTLS)")
        else:
            client = _certificate_of(name, downstream["cert"], "tls.crt", mounts, certificates, errors)
            _certificate_of(name, downstream["key"], "tls.key", mounts, certificates, errors)
            _certificate_of(name, downstream["ca"], "ca.crt", mounts, certificates, errors)
            if client is not None:
                if "client auth" not in (client["spec"].get("usages") or []):
                    errors.append(f"{name}: its client certificate needs the usage client auth")
                client_issuer = str((client["spec"].get("issuerRef") or {}).get("name"))
    return errors, issuer, client_issuer


def _certificate_of(
    name: str,
    path: str,
    key: str,
    mounts: dict[str, str],
    certificates: dict[str, dict[str, Any]],
    errors: list[str],
) -> dict[str, Any] | None:
    """The Certificate whose Secret is mounted where `path` points, as file `key`; an error when none is."""
    file = PurePosixPath(path)
    secret = mounts.get(str(file.parent))
    if secret is None or file.name != key:
        errors.append(f"{name}: {path or '(not set)'} must be {key} of a mounted Secret (no subPath)")
        return None
    certificate = certificates.get(secret)
    if certificate is None:
        errors.append(f"{name}: no Certificate writes the Secret {secret} mounted for {path}")
    return certificate


def _cache_errors(
    by_kind: dict[str, dict[str, dict[str, Any]]],
    pods: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]],
    certificates: dict[str, dict[str, Any]],
) -> list[str]:
    errors = []
    password_secrets = set()
    for service, (pod, container, pod_env) in pods.items():
        name, variable = f"cir-{service}", f"CIR_{service.upper()}_CACHE_URL"
        url = _value(pod_env, variable)
        if not url:
            continue
        match = re.match(r"^rediss://(?::([^@]*)@)?([^:/]+)", url)
        if match is None:
            errors.append(f"{name}: {variable} must be rediss:// (TLS) when the suite runs TLS")
            continue
        password, host = match.group(1), match.group(2)
        reference = ENV_REFERENCE.match(password or "")
        if reference is None:
            errors.append(f"{name}: {variable} must take its password from a Secret: rediss://:$(VAR)@...")
            continue
        secret = _secret_ref(container, reference.group(1), before=variable)
        if secret is None:
            errors.append(
                f"{name}: {reference.group(1)} must be set from a Secret (secretKeyRef) before {variable}"
            )
        else:
            password_secrets.add(secret)
        ca_file = _value(pod_env, f"CIR_{service.upper()}_CACHE_TLS_CA_FILE")
        if not ca_file or str(PurePosixPath(ca_file).parent) not in _secret_mounts(pod, container):
            errors.append(
                f"{name}: CIR_{service.upper()}_CACHE_TLS_CA_FILE must be a mounted Secret's ca.crt"
            )
        redis = by_kind.get("Deployment", {}).get(host)
        if redis is not None:
            errors += _redis_errors(redis, certificates, password_secrets)
    for secret in sorted(password_secrets & set(by_kind.get("Secret", {}))):
        errors.append(f"Secret {secret}: the cache password must not be in the overlay; create it apart")
    return sorted(set(errors))


def _redis_errors(
    redis: dict[str, Any], certificates: dict[str, dict[str, Any]], password_secrets: set[str]
) -> list[str]:
    name = redis["metadata"]["name"]
    pod = redis["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = [str(a) for a in container.get("args", [])]
    errors = []

    def arg(flag: str) -> str | None:
        return args[len(args) - 1 - args[::-1].index(flag) + 1] if flag in args[:-1] else None

    if arg("--tls-port") is None or arg("--port") != "0":
        errors.append(f"{name}: Redis must serve TLS only (--tls-port, --port 0)")
    mounts = _secret_mounts(pod, container)
    for flag, key in (("--tls-cert-file", "tls.crt"), ("--tls-key-file", "tls.key")):
        _certificate_of(name, arg(flag) or "", key, mounts, certificates, errors)
    reference = ENV_REFERENCE.match(arg("--requirepass") or "")
    secret = _secret_ref(container, reference.group(1)) if reference else None
    if secret is None or secret not in password_secrets:
        errors.append(
            f"{name}: --requirepass must be $(VAR) set from the Secret the services' cache URLs use"
        )
    return errors


def _secret_mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """Mount path -> Secret name of the container's whole-Secret mounts (a subPath mount is never updated)."""
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
    return {
        str(PurePosixPath(m["mountPath"])): secrets[m["name"]]
        for m in container.get("volumeMounts", [])
        if m["name"] in secrets and not m.get("subPath")
    }


def _secret_ref(container: dict[str, Any], variable: str, before: str | None = None) -> str | None:
    """The Secret `variable` is set from, when it is (and precedes `before` in the env list)."""
    for entry in container.get("env", []):
        if entry["name"] == before:
            return None
        if entry["name"] == variable:
            return (entry.get("valueFrom", {}).get("secretKeyRef") or {}).get("name")
    return None


def _value(pod_env: dict[str, Any], name: str) -> str:
    value = pod_env.get(name, "")
    return str(value.get("value", "") if isinstance(value, dict) else value)


def _hours(duration: str) -> float:
    scale = {"h": 1.0, "m": 1 / 60, "s": 1 / 3600, "ms": 1 / 3_600_000}
    return sum(float(n) * scale[unit] for n, _, unit in re.findall(r"(\d+(\.\d+)?)(h|ms|m|s)", duration))


def _generated(config_maps: dict[str, dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The ConfigMap that configMapGenerator named `prefix-<hash>`."""
    return next(doc for name, doc in config_maps.items() if name.rsplit("-", 1)[0] == prefix)


def main(argv: list[str]) -> int:
    path, overlay = argv
    with open(path, encoding="utf-8") as handle:
        docs = [d for d in yaml.safe_load_all(handle) if d]
    errors, tls = check(docs, overlay)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    if not tls:
        print(f"ok  {overlay}: no TLS (plaintext ports, no cert-manager resources)")
    else:
        print(
            f"ok  {overlay}: cert-manager Issuers and Certificates, TLS on every port, mTLS to the model "
            "services from the retriever, certificates from mounted Secrets, exec probes, rediss:// cache"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
