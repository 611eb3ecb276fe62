"""API keys of the public API: who may call which RPC, and how often.

The keys file (CIR_RETRIEVER_API_KEYS_FILE, TOML) holds one `[[keys]]` table per caller:

    [[keys]]
    name = "web-frontend"           # names the caller in messages and logs
    sha256 = "<64 hex digits>"      # sha256 of the key (UTF-8): the key itself is never stored
    role = "search"                 # search, write or admin
    requests_per_second = 20        # optional rate limit (a token bucket) ...
    burst = 40                      # ... and its burst (default: requests_per_second, at least 1)

A caller sends its key as gRPC metadata `authorization: Bearer <key>`. The presented key is hashed and its
digest compared with every stored digest in constant time (`hmac.compare_digest`, no early exit), so neither
the timing nor the message tells a caller how close a guess came or which key it matched. Roles nest: `write`
may call what `search` may, `admin` what `write` may (`RPC_ROLES`). `cir keys generate` makes a key and its
entry. The file is re-read when it changes (checked at most once a second): a Kubernetes Secret update needs
no restart. A changed file that does not load leaves the keys it replaced in force, with an error in the log.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from cir_common.errors import ConfigError, PermissionDenied, ResourceExhausted, Unauthenticated
from cir_common.server import Authorizer
from cir_common.vocabulary import API_KEY_ENV, RETRIEVER
from cir_retriever.settings import ENV_PREFIX, RetrieverSettings

log = logging.getLogger(__name__)

SETTING = f"{ENV_PREFIX}API_KEYS_FILE"
AUTHORIZATION_HEADER = "authorization"
CLIENT_KEY_ENV = API_KEY_ENV  # what the cir command and the clients read (cir_client.retriever)
RELOAD_CHECK_INTERVAL_S = 1.0


class Role(StrEnum):
    """What a key may do; each role may call what the roles before it may."""

    SEARCH = "search"
    WRITE = "write"
    ADMIN = "admin"


_RANK = {role: rank for rank, role in enumerate(Role)}

# The least role that may call each RPC of cir.retriever.v1.RetrieverService. Every RPC has exactly one entry
# (tests/retriever/test_auth.py holds this against the proto); an RPC missing here is refused to every key.
RPC_ROLES: dict[str, Role] = {
    "Search": Role.SEARCH,
    "GetCollectionInfo": Role.SEARCH,
    "ListCollections": Role.SEARCH,
    "ListStrategies": Role.SEARCH,
    "CreateCollection": Role.WRITE,
    "IngestImages": Role.WRITE,
    "ImportGalleryFeatures": Role.WRITE,
    "DeleteImages": Role.WRITE,
    "DeleteCollection": Role.ADMIN,
    "ExportGalleryFeatures": Role.ADMIN,
    "GetServiceStats": Role.ADMIN,
}


def allowed_rpcs(role: Role) -> frozenset[str]:
    """The RPCs a key with `role` may call."""
    return frozenset(rpc for rpc, least in RPC_ROLES.items() if _RANK[least] <= _RANK[role])


def key_digest(key: str) -> bytes:
    """The sha256 of a key, as stored (hex) in the keys file."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def generate_key() -> str:
    """A new random key: 256 bits, URL-safe (a valid gRPC metadata value), prefixed so scanners spot it."""
    return "cir_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class RateLimit:
    requests_per_second: float
    burst: int


@dataclass(frozen=True)
class ApiKey:
    """One entry of the keys file."""

    name: str
    digest: bytes
    role: Role
    rate_limit: RateLimit | None = None


def keys_entry(
    name: str, key: str, role: Role, requests_per_second: float | None = None, burst: int | None = None
) -> str:
    """The `[[keys]]` TOML entry of `key` (its digest, never the key); `parse_keys` reads it back."""
    lines = [
        "[[keys]]",
        f"name = {json.dumps(name, ensure_ascii=False)}",  # a JSON string is a TOML basic string
        f'sha256 = "{key_digest(key).hex()}"',
        f'role = "{role}"',
    ]
    if requests_per_second is not None:
        lines.append(f"requests_per_second = {float(requests_per_second)!r}")
    if burst is not None:
        lines.append(f"burst = {burst}")
    return "\n".join(lines) + "\n"


# --- the keys file ---------------------------------------------------------------------------------------

_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")
_FIELDS = {"name", "sha256", "role", "requests_per_second", "burst"}


def load_keys(path: Path) -> list[ApiKey]:
    """The keys of the file at `path`; a ConfigError says what to fix (never echoing a key or a digest)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{SETTING}={path}: cannot read the keys file: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{SETTING}={path}: the keys file is not UTF-8 text") from None
    return parse_keys(text, source=f"{SETTING}={path}")


def parse_keys(text: str, source: str = SETTING) -> list[ApiKey]:
    """The keys of a keys file's text; errors start with `source`."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    unknown = sorted(set(document) - {"keys"})
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level entries {unknown}: the file holds only [[keys]] tables"
        )
    entries = document.get("keys")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ConfigError(
            f"{source}: no [[keys]] tables: add one per caller (`cir keys generate --name NAME --role ROLE` "
            f"prints one), or leave {SETTING} empty to run without keys (development only)"
        )
    keys = [_parse_entry(entry, f"{source}: keys[{index}]") for index, entry in enumerate(entries)]
    _refuse_duplicates(keys, source)
    return keys


def _parse_entry(entry: dict[str, Any], where: str) -> ApiKey:
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f'{where}: `name` is missing or empty: name the caller, e.g. name = "web-frontend"')
    where = f"{where} (name {name!r})"
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        hint = (
            ": store the key's sha256 (`cir keys hash` prints it), never the key itself"
            if {"key", "api_key", "secret", "token"} & set(unknown)
            else ""
        )
        raise ConfigError(f"{where}: unknown fields {unknown} (known: {sorted(_FIELDS)}){hint}")
    digest = entry.get("sha256")
    if not isinstance(digest, str) or not _HEX_DIGEST.match(digest):
        raise ConfigError(
            f"{where}: `sha256` must be the key's sha256 as 64 hex digits (`cir keys hash` prints it)"
        )
    role = entry.get("role")
    if role not in {r.value for r in Role}:
        raise ConfigError(f"{where}: `role` is {role!r}; use one of {', '.join(r.value for r in Role)}")
    return ApiKey(name, bytes.fromhex(digest), Role(role), _parse_rate_limit(entry, where))


def _parse_rate_limit(entry: dict[str, Any], where: str) -> RateLimit | None:
    rate, burst = entry.get("requests_per_second"), entry.get("burst")
    if rate is None:
        if burst is not None:
            raise ConfigError(f"{where}: `burst` needs `requests_per_second` (the rate that refills it)")
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        raise ConfigError(f"{where}: `requests_per_second` must be a number above 0, got {rate!r}")
    if burst is None:
        burst = max(1, math.ceil(rate))
    elif isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigError(f"{where}: `burst` must be a whole number of requests, at least 1, got {burst!r}")
    return RateLimit(float(rate), burst)


def _refuse_duplicates(keys: list[ApiKey], source: str) -> None:
    names: set[str] = set()
    digests: dict[bytes, str] = {}
    for key in keys:
        if key.name in names:
            raise ConfigError(f"{source}: two keys are named {key.name!r}: give each caller its own name")
        names.add(key.name)
        if key.digest in digests:
            raise ConfigError(
                f"{source}: keys {digests[key.digest]!r} and {key.name!r} have the same sha256: "
                "generate a key of its own for each caller"
            )
        digests[key.digest] = key.name


# --- rate limits -----------------------------------------------------------------------------------------


class TokenBucket:
    """`burst` requests at once, refilled at `requests_per_second`."""

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.updated = now

    def take(self, now: float) -> float:
        """Takes one request's token: 0.0, or the seconds until one is there (nothing is taken then)."""
        rate = self.limit.requests_per_second
        self.tokens = min(float(self.limit.burst), self.tokens + max(0.0, now - self.updated) * rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / rate


# --- the authorizer --------------------------------------------------------------------------------------


class ApiKeyAuthorizer:
    """The retriever's `authorize` hook (cir_common.server.Authorizer): the caller's key, its role, its rate.

    Raises Unauthenticated (no key, or one not in the file), PermissionDenied (the key's role may not call
    the RPC) or ResourceExhausted with a retry hint (the key is over its rate limit).
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        reload_interval_s: float = RELOAD_CHECK_INTERVAL_S,
    ) -> None:
        self.path = path
        self._clock = clock
        self._reload_interval_s = reload_interval_s
        self._lock = threading.Lock()
        self._signature = self._file_signature()
        self._keys: list[ApiKey] = []
        self._buckets: dict[str, TokenBucket] = {}
        now = clock()
        self._install(load_keys(path), now)
        self._next_check = now + reload_interval_s
        log.info("API keys: %s", _summary(self._keys, path))

    @property
    def keys(self) -> list[ApiKey]:
        return list(self._keys)

    def __call__(self, method: str, metadata: Mapping[str, str]) -> None:
        rpc = _rpc_name(method)
        presented = _presented_key(metadata.get(AUTHORIZATION_HEADER))
        with self._lock:
            now = self._clock()
            self._reload_if_changed(now)
            key = _match(key_digest(presented), self._keys)
            if key is None:
                raise Unauthenticated(
                    "the API key is not one this retriever knows (mistyped, revoked, or for another "
                    f"deployment): check {CLIENT_KEY_ENV}, or ask the operator for a key"
                )
            least = RPC_ROLES.get(rpc)
            if least is None:
                raise PermissionDenied(f"{method} is not an RPC that an API key may call")
            if _RANK[key.role] < _RANK[least]:
                raise PermissionDenied(
                    f"the API key {key.name!r} has role {key.role.value!r}, which may not call {rpc}: "
                    f"it needs role {least.value!r} or higher (roles: search < write < admin)"
                )
            bucket = self._buckets.get(key.name)
            wait_s = bucket.take(now) if bucket is not None else 0.0
            if bucket is not None and wait_s > 0.0:
                retry_ms = max(1, math.ceil(wait_s * 1000.0))
                raise ResourceExhausted(
                    f"the API key {key.name!r} is over its rate limit ({bucket.limit.requests_per_second:g} "
                    f"requests per second, burst {bucket.limit.burst}): retry in {retry_ms} ms, or ask the "
                    "operator for a higher limit",
                    retry_after_ms=retry_ms,
                )

    def _install(self, keys: list[ApiKey], now: float) -> None:
        """Uses `keys` from now on; a key whose limit is unchanged keeps its bucket (no refill by reload)."""
        buckets = {}
        for key in keys:
            if key.rate_limit is None:
                continue
            old = self._buckets.get(key.name)
            buckets[key.name] = (
                old if old is not None and old.limit == key.rate_limit else TokenBucket(key.rate_limit, now)
            )
        self._keys, self._buckets = keys, buckets

    def _file_signature(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _reload_if_changed(self, now: float) -> None:
        if now < self._next_check:
            return
        self._next_check = now + self._reload_interval_s
        signature = self._file_signature()
        if signature == self._signature:
            return
        self._signature = signature
        if signature is None:
            # A Secret's files are swapped by a symlink: gone for a moment at most. Keep the keys in force.
            log.warning(
                "API keys: %s is gone; the %d keys loaded before stay in force", self.path, len(self._keys)
            )
            return
        try:
            keys = load_keys(self.path)
        except ConfigError as error:
            log.error(
                "API keys: the changed file does not load, the keys loaded before stay in force: %s", error
            )
            return
        self._install(keys, now)
        log.info("API keys reloaded: %s", _summary(keys, self.path))


def _rpc_name(method: str) -> str:
    """`/cir.retriever.v1.RetrieverService/Search` -> `Search`; a method of any other service -> ''."""
    service, _, rpc = method.lstrip("/").rpartition("/")
    return rpc if service == RETRIEVER.grpc_name else ""


def _presented_key(value: str | bytes | None) -> str:
    if not value:
        raise Unauthenticated(
            f"no API key: this retriever requires one, sent as gRPC metadata '{AUTHORIZATION_HEADER}: "
            f"Bearer <key>' (the cir command and the clients send {CLIENT_KEY_ENV})"
        )
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    scheme, _, key = text.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise Unauthenticated(
            f"the '{AUTHORIZATION_HEADER}' metadata must be 'Bearer <key>': the word Bearer, a space, the key"
        )
    return key


def _match(digest: bytes, keys: list[ApiKey]) -> ApiKey | None:
    """The key whose digest is `digest`: every stored digest is compared in constant time, match or not."""
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest):
            found = key
    return found


def _summary(keys: list[ApiKey], path: Path) -> str:
    by_role = {role.value: sum(key.role == role for key in keys) for role in Role}
    limited = sum(key.rate_limit is not None for key in keys)
    roles = ", ".join(f"{count} {role}" for role, count in by_role.items() if count)
    return (
        f"{len(keys)} key{'s' if len(keys) != 1 else ''} from {path} ({roles}; {limited} with a rate limit)"
    )


def authorizer_for(settings: RetrieverSettings) -> Authorizer | None:
    """The authorizer the settings ask for: None (every call allowed) without a keys file."""
    if not settings.api_keys_file:
        if settings.host not in ("127.0.0.1", "::1", "localhost"):
            log.warning(
                "no API keys (%s is empty): every caller that reaches %s:%d may call every RPC",
                SETTING,
                settings.host,
                settings.port,
            )
        return None
    return ApiKeyAuthorizer(Path(settings.api_keys_file))
