"""TLS for the suite's gRPC ports and channels, from PEM files that are re-read when they change.

A `TlsFiles` names a certificate chain and its key (both or neither) and a CA bundle. `FileWatch` keeps what
was last loaded from them and, when asked, stats the files: when one changed (a new mtime, size or inode: a
rewrite, a rename over it, or Kubernetes swapping a Secret volume's `..data` link), it reads them again and
checks them with the standard `ssl` module (the key fits the certificate, the CA is PEM) before anything uses
them. A half-done rotation (a new certificate beside the old key) is refused with a warning and the previous
material stays in use until the files agree again.

- Servers: `server_credentials` wraps `grpc.dynamic_ssl_server_credentials`. gRPC asks its fetcher at every
  new connection's handshake, so a rotated certificate, key or client CA takes effect for new connections
  without a restart; connections already open keep the one they were made with (servers close them after
  max_connection_age_s). With a client CA, callers must present a certificate that CA signed (mTLS).
- Channels: credentials are fixed per channel, so `cir_common.channels` opens a new channel when the files
  change (`FileWatch.poll`) and retires the old one once its calls are done.
- Health probes (`health_probe_tls`): how a probe reaches a service's TLS port from the service's own
  environment (the images' healthcheck, the local suite's start-up wait).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from cir_common.config import ServiceSettings
from cir_common.errors import ConfigError
from cir_common.vocabulary import TLS_CA_FILE_ENV

log = logging.getLogger(__name__)

# The CA a client trusts for the suite's TLS ports (the CLI, the Python client and the probes read it).
CA_FILE_ENV = TLS_CA_FILE_ENV

# A file's identity for change detection: (device, inode, size, mtime in ns), or None while it is missing.
_Stamp = tuple[int, int, int, int] | None


@dataclass(frozen=True)
class TlsMaterial:
    """The PEM bytes read from a `TlsFiles` (None where a file is not set)."""

    cert: bytes | None
    key: bytes | None
    ca: bytes | None


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: a certificate chain and its private key (both or neither), and a CA bundle; "" = not set.

    `names` are how messages name the three (the settings an operator sets, e.g. CIR_ENCODER_TLS_CERT_FILE).
    """

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    names: tuple[str, str, str] = ("certificate file", "key file", "CA file")

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError(f"{self.names[0]} and {self.names[1]} go together: set both or neither")

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path in (self.cert_file, self.key_file, self.ca_file) if path)

    def stamp(self) -> tuple[_Stamp, ...]:
        stamps: list[_Stamp] = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
            else:
                stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def load(self) -> TlsMaterial:
        """Reads and checks the files; ConfigError naming the file (and its setting) that is unusable."""
        material = TlsMaterial(
            self._read(self.cert_file, self.names[0]),
            self._read(self.key_file, self.names[1]),
            self._read(self.ca_file, self.names[2]),
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.cert_file:
            try:
                # An encrypted key is refused (gRPC cannot use one) instead of prompting for a passphrase.
                context.load_cert_chain(self.cert_file, self.key_file, password=lambda: b"")
            except (ssl.SSLError, OSError) as error:
                raise ConfigError(
                    f"{self.names[0]}={self.cert_file!r} and {self.names[1]}={self.key_file!r} are not a "
                    f"PEM certificate chain and its unencrypted private key ({error})"
                ) from error
        if material.ca is not None:
            try:
                context.load_verify_locations(cadata=material.ca.decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError) as error:
                raise ConfigError(
                    f"{self.names[2]}={self.ca_file!r} holds no PEM CA certificate ({error})"
                ) from error
        return material

    @staticmethod
    def _read(path: str, name: str) -> bytes | None:
        if not path:
            return None
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError as error:
            raise ConfigError(f"{name}={path!r} cannot be read: {error.strerror or error}") from error


class FileWatch:
    """A `TlsFiles`' material, loaded now (ConfigError when unusable) and again when the files change."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._stamp = files.stamp()
        self.material = files.load()
        self._refused: tuple[_Stamp, ...] | None = None

    def poll(self) -> TlsMaterial | None:
        """The new material when the files changed since the last load and are usable; else None.

        Cheap when nothing changed (a stat per file). Files that fail the checks are reported once and tried
        again when they change again; files that change while being read are tried again at the next poll.
        """
        with self._lock:
            stamp = self.files.stamp()
            if stamp in (self._stamp, self._refused):
                return None
            try:
                material = self.files.load()
            except ConfigError as error:
                if self.files.stamp() == stamp:
                    self._refused = stamp
                    log.warning("TLS files changed but are not usable, keeping the previous ones: %s", error)
                return None
            if self.files.stamp() != stamp:
                return None  # written to while we read: the next poll reads the finished files
            self._stamp, self._refused, self.material = stamp, None, material
            log.info("TLS files reloaded: %s", ", ".join(self.files.paths))
            return material


def server_files(settings: ServiceSettings) -> TlsFiles | None:
    """The TLS files of a service's gRPC port (its tls_* settings), or None for plaintext."""
    if not settings.tls_cert_file:
        return None
    names = ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
    return TlsFiles(
        settings.tls_cert_file,
        settings.tls_key_file,
        settings.tls_client_ca_file,
        (settings.variable(names[0]), settings.variable(names[1]), settings.variable(names[2])),
    )


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Server credentials that follow the files: gRPC asks for changes at each new connection's handshake.

    With `files.ca_file`, a client must present a certificate that CA signed (mTLS). Whether a client
    certificate is required is fixed here; which CA signs it, like the server's own pair, may change.
    """
    watch = FileWatch(files)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            material = watch.poll()
            return None if material is None else _server_configuration(material)
        except Exception:  # raised into gRPC's handshake, it would only be logged there
            log.exception("reloading the TLS files %s failed; the previous ones stay in use", files.paths)
            return None

    return grpc.dynamic_ssl_server_credentials(
        _server_configuration(watch.material), fetch, require_client_authentication=bool(files.ca_file)
    )


def _server_configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    assert material.key is not None and material.cert is not None
    return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.ca)


def channel_credentials(material: TlsMaterial) -> grpc.ChannelCredentials:
    """Client credentials: trust `material.ca` (None: the system's CAs), present the pair if there is one."""
    return grpc.ssl_channel_credentials(material.ca, material.key, material.cert)


def health_probe_tls(environ: Mapping[str, str], env_prefix: str) -> TlsFiles | None:
    """How a health probe reaches the service whose settings are `env_prefix*` in `environ`: None when its
    port is plaintext (no TLS_CERT_FILE). The server's certificate is checked against CIR_TLS_CA_FILE, else
    the service's client CA (the one CA of a deployment that signs both sides, as cert-manager's issuer does
    in deploy/k8s/components/tls), else the system's CAs. With mTLS the probe presents the service's own
    certificate and key: they must carry the client-auth usage besides server-auth."""
    cert = environ.get(f"{env_prefix}TLS_CERT_FILE", "")
    if not cert:
        return None
    client_ca = environ.get(f"{env_prefix}TLS_CLIENT_CA_FILE", "")
    ca = environ.get(CA_FILE_ENV, "") or client_ca
    key = environ.get(f"{env_prefix}TLS_KEY_FILE", "")
    ca_name = f"{env_prefix}TLS_CLIENT_CA_FILE" if ca == client_ca else CA_FILE_ENV
    names = (f"{env_prefix}TLS_CERT_FILE", f"{env_prefix}TLS_KEY_FILE", ca_name)
    return TlsFiles(cert if client_ca else "", key if client_ca else "", ca, names)
