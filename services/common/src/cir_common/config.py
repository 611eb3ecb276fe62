"""Service configuration: typed dataclasses filled from a profile file and the environment.

Precedence, lowest first: the dataclass defaults, the service's section of a TOML profile
(`CIR_PROFILE` or `<PREFIX>PROFILE`), then environment variables `<PREFIX><FIELD>` (e.g.
`CIR_ENCODER_PORT=50061`). Unknown keys are errors, so a typo never silently falls back to
a default.

A field typed with a `StrEnum` takes one of its values; each settings class checks itself when built
(`validate`), so a service refuses a bad combination at start, whoever built the settings.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from cir_common.errors import ConfigError
from cir_common.vocabulary import PROFILE_ENV, LogFormat

MIB = 1024 * 1024


def choice(default: enum.Enum, allowed: tuple[enum.Enum, ...], why: str = "") -> Any:
    """A settings field that takes only `allowed` of its enum's members (a shared enum some of whose values
    this service cannot run); `why` is added to the refusal."""
    return dataclasses.field(default=default, metadata={"allowed": allowed, "why": why})


@dataclasses.dataclass
class ServiceSettings:
    """Settings every service has. Services subclass this and add their own fields."""

    # The service's environment prefix (CIR_ENCODER_): messages name a setting by its variable, the name an
    # operator sets. Empty = by its field name.
    env_prefix: ClassVar[str] = ""

    host: str = "127.0.0.1"
    port: int = 0
    # Largest request or response message, both directions.
    max_message_bytes: int = 32 * MIB
    # On SIGTERM: report NOT_SERVING this long before refusing new calls, so load balancers move away.
    shutdown_delay_s: float = 0.0
    # Then wait at most this long for in-flight calls to finish.
    shutdown_grace_s: float = 30.0
    # Close client connections after this long (0 = never) so clients re-resolve and reach new replicas.
    max_connection_age_s: float = 0.0
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    # gRPC server reflection (grpcurl list / describe); off hides the API's shape from unknown callers.
    reflection: bool = True
    # Prometheus metrics over HTTP on this port (GET /metrics); 0 = off.
    metrics_port: int = 0
    # TLS for the gRPC port: the server's certificate chain and key (PEM; both or neither). Re-read when the
    # files change, without a restart. With tls_client_ca_file too, callers must present a certificate that
    # CA signed (mTLS).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Redis URL of the shared cache; empty = an in-process LRU of cache_memory_bytes.
    cache_url: str = ""
    # CA (PEM) that signed the Redis server's certificate, for a rediss:// cache_url with a private CA; empty
    # = the system's CAs.
    cache_tls_ca_file: str = ""
    cache_memory_bytes: int = 256 * MIB
    max_image_bytes: int = 32 * MIB
    # Decompression-bomb guard: largest width * height accepted.
    max_image_pixels: int = 50_000_000
    # Local folders from which images may be referenced by file:// URI; empty = URIs refused.
    image_uri_roots: list[str] = dataclasses.field(default_factory=list)
    # Once SERVING, how often a service that depends on a backend (the retriever's gallery store) checks it;
    # health turns NOT_SERVING while the check fails and SERVING again when it passes.
    health_check_interval_s: float = 5.0
    # Admission control on every RPC but health and reflection: calls running at once. Model work is batched
    # behind this, so more calls than a full batch (64 is the encoder's batch_max_size) add no throughput.
    max_concurrent_rpcs: int = 64
    # Calls waiting for a slot (FIFO, until their deadline); past it a call gets RESOURCE_EXHAUSTED at once
    # with a retry hint. Twice max_concurrent_rpcs absorbs a burst without letting latency grow unbounded.
    max_queued_rpcs: int = 128
    # Process-wide budget of decoded pixels in memory, estimated from image headers before decoding (a 7000 x
    # 7000 PNG of 47 KB takes about 196 MB decoded). 1 GiB holds five of those, or twenty 12-megapixel photos.
    max_decoded_image_bytes: int = 1024 * MIB
    # How long a request waits for room in that budget before RESOURCE_EXHAUSTED (its deadline also ends it).
    max_decoded_image_wait_s: float = 5.0
    # Items waiting for the model in each micro-batcher (encoder, captioner); past it RESOURCE_EXHAUSTED at
    # once. 0 = eight batches' worth (and at least one largest request): more only adds latency.
    max_pending_batch_items: int = 0
    # Redis cache, fail fast (cir_common.cache.RedisCache): each call is bounded by these timeouts, so a hung
    # Redis costs a fraction of a second, not a request's deadline; a loaded event loop can stall ~0.3 s.
    cache_connect_timeout_s: float = 0.25
    cache_socket_timeout_s: float = 0.5
    # Failed calls in a row that open the breaker: no Redis call at all then, the in-process LRU serves.
    # More than one, so one stall of a busy event loop does not take Redis out of use.
    cache_breaker_failures: int = 3
    # While open, one background PING this often; the breaker closes (on fresh connections) when it answers.
    cache_probe_interval_s: float = 2.0

    def __post_init__(self) -> None:
        # Enum fields built from plain strings (tests, profiles read by hand) get their enum, or a ConfigError
        # that lists the choices; fields narrowed by `choice` are checked; then the class's own checks run.
        hints = _fields(type(self))
        for field in dataclasses.fields(self):
            hint, value = hints[field.name], getattr(self, field.name)
            if _is_enum(hint) and not isinstance(value, hint):
                value = _coerce(field.name, value, hint, label=self.variable(field.name))
                setattr(self, field.name, value)
            allowed = field.metadata.get("allowed")
            if allowed is not None and value not in allowed:
                why = field.metadata.get("why", "")
                raise ConfigError(
                    f"{self.variable(field.name)}={str(value)!r}: choose {_prose(allowed)}"
                    + (f" ({why})" if why else "")
                )
        self.validate()

    @classmethod
    def variable(cls, name: str) -> str:
        """How messages name the setting `name`: its environment variable when the class has a prefix."""
        return f"{cls.env_prefix}{name.upper()}" if cls.env_prefix else name

    def require_at_least(self, minimum: float, *names: str) -> None:
        """ConfigError naming the first of `names` whose value is below `minimum` (NaN included)."""
        for name in names:
            value = getattr(self, name)
            if not value >= minimum:
                raise ConfigError(f"{self.variable(name)} must be at least {minimum}, got {value}")

    def require_positive(self, *names: str) -> None:
        """ConfigError naming the first of `names` whose value is not above zero (NaN included)."""
        for name in names:
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{self.variable(name)}={value} must be positive")

    def validate(self) -> None:
        """Raise ConfigError naming the setting and what to change. Subclasses extend it (and call super)."""
        if not 0 <= self.port <= 65535:
            raise ConfigError(
                f"{self.variable('port')}={self.port} is not a TCP port (0..65535; 0 = any free port)"
            )
        self.require_positive(
            "max_message_bytes", "max_image_bytes", "max_image_pixels", "max_decoded_image_bytes"
        )
        if not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                f"{self.variable('metrics_port')}={self.metrics_port} is not a TCP port (0 = off)"
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(
                f"{self.variable('tls_cert_file')} and {self.variable('tls_key_file')} go together: set both "
                "(TLS) or neither (plaintext)"
            )
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(
                f"{self.variable('tls_client_ca_file')} (mTLS) needs TLS: set "
                f"{self.variable('tls_cert_file')} and {self.variable('tls_key_file')} too"
            )


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def load_settings(
    cls: type[SettingsT],
    *,
    section: str,
    env_prefix: str,
    profile: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> SettingsT:
    """Builds `cls` from defaults, the profile's `[section]` table and `env_prefix*` variables."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    profile_path = profile or env.get(f"{env_prefix}PROFILE") or env.get(PROFILE_ENV)
    if profile_path:
        values.update(_read_profile_section(Path(profile_path), section))
    values.update(_read_environment(cls, env_prefix, env))
    fields = _fields(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown {section} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}"
        )
    kwargs = {
        name: _coerce(name, raw, fields[name], label=f"{env_prefix}{name.upper()}")
        for name, raw in values.items()
    }
    return cls(**kwargs)


def settings_reference(cls: type[ServiceSettings], env_prefix: str) -> list[tuple[str, str, str]]:
    """(environment variable, type, default) for every field: the configuration reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        shown = repr(default.value) if isinstance(default, enum.Enum) else repr(default)
        allowed = field.metadata.get("allowed")
        kind = _type_name(hints[field.name]) if allowed is None else _members_name(allowed)
        rows.append((f"{env_prefix}{field.name.upper()}", kind, shown))
    return rows


def _fields(cls: type[ServiceSettings]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {field.name: hints[field.name] for field in dataclasses.fields(cls)}


def _read_profile_section(path: Path, section: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"profile file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile file {path} is not valid TOML: {exc}") from None
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"profile file {path}: [{section}] must be a table")
    return dict(table)


def _read_environment(cls: type[ServiceSettings], prefix: str, env: Mapping[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in env.items():
        if key.startswith(prefix) and key != f"{prefix}PROFILE":
            found[key[len(prefix) :].lower()] = value
    return found


def _coerce(name: str, raw: Any, hint: Any, label: str = "") -> Any:
    """`raw` as `hint`. A bad choice is named by `label` (its environment variable), others by `name`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw == ""):
            return None
        return _coerce(name, raw, inner[0], label)
    try:
        if _is_enum(hint):
            return _to_enum(raw, hint)
        if hint is bool:
            return _to_bool(raw)
        if hint in (int, float):
            if isinstance(raw, bool):
                raise ValueError("a boolean is not a number")
            return hint(raw)
        if hint is str:
            if not isinstance(raw, str):
                raise ValueError("expected a string")
            return raw
        if origin is list:
            items = raw if isinstance(raw, list) else [s.strip() for s in str(raw).split(",") if s.strip()]
            return [_coerce(name, item, args[0], label) for item in items]
        if origin is dict:
            mapping = raw if isinstance(raw, dict) else _parse_mapping(str(raw))
            return {str(k): _coerce(name, v, args[1], label) for k, v in mapping.items()}
    except (TypeError, ValueError) as exc:
        if _is_enum(hint):
            raise ConfigError(f"{label or name}={raw!r}: choose {_prose(tuple(hint))}") from None
        raise ConfigError(f"setting {name}={raw!r} is not a valid {_type_name(hint)}: {exc}") from None
    raise ConfigError(f"setting {name} has an unsupported type {hint!r}")


def _is_enum(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, enum.Enum)


def _to_enum(raw: Any, hint: type[enum.Enum]) -> enum.Enum:
    if isinstance(raw, hint):
        return raw
    try:
        return hint(raw.strip().lower() if isinstance(raw, str) else raw)
    except ValueError:
        raise ValueError("not one of the choices") from None


def _members_name(members: tuple[enum.Enum, ...]) -> str:
    """A choice's type as the reference shows it: 'a / b / c' (a Markdown table cell cannot hold '|')."""
    return " / ".join(str(member.value) for member in members)


def _prose(members: tuple[enum.Enum, ...]) -> str:
    """The values in prose: 'a or b', 'a, b or c' ('' where the empty string is one)."""
    values = [repr(str(member.value)) if member.value == "" else str(member.value) for member in members]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def _to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true/false")


def _parse_mapping(text: str) -> dict[str, str]:
    """Accepts JSON (`{"a": "x"}`) or `a=x,b=y` for dict settings given in the environment."""
    text = text.strip()
    if text.startswith("{"):
        parsed = json.loads(text)
        if not isinstance(parsed, dict):
            raise ValueError("expected a JSON object")
        return parsed
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {part!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if _is_enum(hint):
        return _members_name(tuple(hint))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(hint))}]"
    return getattr(hint, "__name__", str(hint))
