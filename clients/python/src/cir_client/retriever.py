"""Client-side helpers for the retriever's public API: index a folder, run a search, print results.

Used by the `cir index`, `cir search`, `cir collections`, `cir eval` and `cir demo` commands. `connect` reads
the caller's credentials from the environment: CIR_API_KEY (sent as `authorization: Bearer <key>` with every
call), CIR_TLS_CA_FILE (TLS, trusting that CA), CIR_TLS_CERT_FILE and CIR_TLS_KEY_FILE (a client certificate
for mTLS).
"""

from __future__ import annotations

import collections
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cir.common.v1 import common_pb2
from cir.retriever.v1 import retriever_pb2, retriever_pb2_grpc
from cir_common.vocabulary import API_KEY_ENV, TLS_CA_FILE_ENV, TLS_CERT_FILE_ENV, TLS_KEY_FILE_ENV

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

STRATEGIES = {
    name.removeprefix("STRATEGY_").lower(): value
    for name, value in retriever_pb2.Strategy.items()
    if value != retriever_pb2.STRATEGY_UNSPECIFIED
}
PRESETS = {
    name.removeprefix("PRESET_").lower(): value
    for name, value in retriever_pb2.Preset.items()
    if value != retriever_pb2.PRESET_UNSPECIFIED
}


# --- connecting: TLS and the API key ---------------------------------------------------------------------

# The client's environment variables (not service settings): the README documents them under "API keys".
CLIENT_ENVIRONMENT = (API_KEY_ENV, TLS_CA_FILE_ENV, TLS_CERT_FILE_ENV, TLS_KEY_FILE_ENV)
AUTHORIZATION_HEADER = "authorization"


@dataclass(frozen=True)
class Credentials:
    """What a client shows the retriever (an API key, a client certificate) and whom it trusts (a CA).

    Empty fields are off: no key, no TLS. `from_environment()` reads them from CLIENT_ENVIRONMENT.
    """

    api_key: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        env = os.environ if environ is None else environ
        return cls(*(env.get(name, "").strip() for name in CLIENT_ENVIRONMENT))

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials when a CA is named (with the client certificate, if any); None: plaintext."""
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise UsageError(
                f"{TLS_CERT_FILE_ENV} and {TLS_KEY_FILE_ENV} go together: set both (mTLS) or neither"
            )
        if not self.tls_ca_file:
            if self.tls_cert_file:
                raise UsageError(f"a client certificate needs TLS: set {TLS_CA_FILE_ENV} too")
            return None
        return grpc.ssl_channel_credentials(
            root_certificates=_read(TLS_CA_FILE_ENV, self.tls_ca_file),
            private_key=_read(TLS_KEY_FILE_ENV, self.tls_key_file) if self.tls_key_file else None,
            certificate_chain=_read(TLS_CERT_FILE_ENV, self.tls_cert_file) if self.tls_cert_file else None,
        )


def _read(variable: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"{variable}={path}: cannot read it: {error.strerror or error}") from None


def connect(address: str, credentials: Credentials | None = None) -> retriever_pb2_grpc.RetrieverServiceStub:
    """A stub of the retriever at `address`: over TLS when the credentials name a CA, with the API key on
    every call when they hold one. Without `credentials`, they come from the environment (CIR_API_KEY,
    CIR_TLS_CA_FILE, CIR_TLS_CERT_FILE, CIR_TLS_KEY_FILE)."""
    credentials = Credentials.from_environment() if credentials is None else credentials
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ]
    tls = credentials.channel_credentials()
    channel = (
        grpc.secure_channel(address, tls, options=options)
        if tls is not None
        else grpc.insecure_channel(address, options=options)
    )
    if credentials.api_key:
        key = credentials.api_key
        if not all(" " < char <= "~" for char in key):
            raise UsageError(f"{API_KEY_ENV} holds spaces or characters a gRPC header cannot carry")
        channel = grpc.intercept_channel(channel, _AddMetadata(((AUTHORIZATION_HEADER, f"Bearer {key}"),)))
    return retriever_pb2_grpc.RetrieverServiceStub(channel)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _AddMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the API key) to every call, whatever its shape."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self._pairs = pairs

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            details.method,
            details.timeout,
            [*(details.metadata or ()), *self._pairs],
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


# --- galleries and searches ------------------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def image_id(folder: Path, path: Path) -> str:
    """The id of a gallery file: its path under the folder, without the suffix."""
    return path.relative_to(folder).with_suffix("").as_posix()


@dataclass
class IndexSummary:
    total: int
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)


def index_folder(
    stub: retriever_pb2_grpc.RetrieverServiceStub,
    collection: str,
    folder: Path,
    on_progress: Callable[[retriever_pb2.IngestProgress, int], None] | None = None,
) -> IndexSummary:
    files = image_files(folder)

    def requests() -> Iterator[retriever_pb2.IngestImagesRequest]:
        for path in files:
            yield retriever_pb2.IngestImagesRequest(
                collection=collection,
                image=retriever_pb2.GalleryImage(
                    id=image_id(folder, path),
                    image=common_pb2.Image(data=path.read_bytes()),
                    uri=path.resolve().as_uri(),
                ),
            )

    summary = IndexSummary(total=len(files))
    for event in stub.IngestImages(requests()):
        if event.HasField("item"):
            status = enum_label(retriever_pb2.ItemStatus, event.item.status, "ITEM_STATUS_")
            summary.counts[status] = summary.counts.get(status, 0) + 1
            if event.item.status == retriever_pb2.ITEM_STATUS_FAILED:
                summary.failures.append(
                    (event.item.id, f"{event.item.error_code}: {event.item.error_message}")
                )
        elif on_progress is not None:
            on_progress(event.progress, len(files))
    return summary


def progress_bar(progress: retriever_pb2.IngestProgress, total: int) -> None:
    done = progress.indexed + progress.unchanged + progress.replaced + progress.failed
    width = 30
    filled = int(width * done / max(total, 1))
    line = (
        f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  indexed {progress.indexed}  "
        f"unchanged {progress.unchanged}  replaced {progress.replaced}  failed {progress.failed}"
    )
    end = "\r" if sys.stderr.isatty() and done < total else "\n"
    print(line, end=end, file=sys.stderr, flush=True)


def search_request(
    collection: str,
    text: str,
    *,
    image: Path | None = None,
    reference_id: str | None = None,
    strategy: str = "cvsi",
    preset: str = "circo",
    top_k: int = 10,
    explain: bool = False,
) -> retriever_pb2.SearchRequest:
    request = retriever_pb2.SearchRequest(
        collection=collection,
        modification_text=text,
        strategy=STRATEGIES[strategy],
        preset=PRESETS[preset],
        top_k=top_k,
        explain=explain,
    )
    if image is not None:
        request.reference_image.data = image.read_bytes()
    elif reference_id is not None:
        request.reference_id = reference_id
    return request


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def enum_label(enum: object, value: int, prefix: str) -> str:
    """`STRATEGY_CVSI` -> `cvsi`: the short lowercase name users type."""
    return enum.Name(value).removeprefix(prefix).lower()  # type: ignore[attr-defined]


def format_response(response: retriever_pb2.SearchResponse) -> str:
    resolved = response.resolved
    lines = [
        f"strategy {enum_label(retriever_pb2.Strategy, resolved.strategy, 'STRATEGY_')}, "
        f"preset {enum_label(retriever_pb2.Preset, resolved.preset, 'PRESET_')}, "
        f"alpha {resolved.alpha:.2f} beta {resolved.beta:.2f} gamma {resolved.gamma:.2f}, "
        f"score {enum_label(retriever_pb2.ScoreFunction, resolved.score_function, 'SCORE_FUNCTION_')}"
    ]
    for rank, hit in enumerate(response.hits, start=1):
        lines.append(f"{rank:3d}. {hit.score:+.4f}  {hit.id}")
    explanation = response.explanation
    if explanation.captions or explanation.fine_grained_prompt:
        lines.append("explanation:")
        if explanation.captions:
            more = f" (+{len(explanation.captions) - 2} more)" if len(explanation.captions) > 2 else ""
            lines.append(f"  captions: {'; '.join(_short(c) for c in explanation.captions[:2])}{more}")
        edits = list(zip(explanation.edited_captions, explanation.edit_outcomes, strict=False))
        for text, outcome in edits[:2]:
            lines.append(f"  edited caption: {_short(text)}  [{outcome}]")
        if len(edits) > 2:
            lines.append(f"  (+{len(edits) - 2} more edited captions; --json shows all)")
        if explanation.objects_outcome:
            lines.append(
                f"  added objects: {_short(explanation.added_objects)!r}  [{explanation.objects_outcome}]"
            )
        if explanation.fine_grained_prompt:
            lines.append(f"  prompt: {_short(explanation.fine_grained_prompt)}")
    for degradation in response.degradations:
        lines.append(f"  DEGRADED {degradation.stage}: {degradation.reason} -> {degradation.effect}")
    timings = ", ".join(f"{t.stage} {t.milliseconds:.0f} ms" for t in response.timings)
    lines.append(f"  timings: {timings}")
    return "\n".join(lines)


# --- collections and filters (cir collections create --filterable, cir search --where) -------------------

FIELD_TYPES = {
    name.removeprefix("FIELD_TYPE_").lower(): value
    for name, value in retriever_pb2.FieldType.items()
    if value != retriever_pb2.FIELD_TYPE_UNSPECIFIED
}
_WHERE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*(<=|>=|=|<|>|\s+in\s+)\s*(.*?)\s*$")
_RANGE_BOUND = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}


class UsageError(ValueError):
    """A command-line value the user must change; the message says how."""


def parse_filterable(spec: str) -> list[retriever_pb2.FilterableField]:
    """`color:string,price:float` -> declared filterable fields."""
    fields = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, kind = part.partition(":")
        if kind not in FIELD_TYPES:
            raise UsageError(
                f"--filterable {part!r}: write NAME:TYPE with TYPE one of {', '.join(FIELD_TYPES)}"
            )
        fields.append(retriever_pb2.FilterableField(name=name, type=FIELD_TYPES[kind]))
    return fields


def parse_where(
    conditions: Sequence[str], declared: Sequence[retriever_pb2.FilterableField]
) -> retriever_pb2.SearchFilter:
    """`color=red`, `color in red,blue`, `price<50`, `in_stock=true` -> a SearchFilter, typed by the
    collection's declared fields (so "true" means a bool only for a bool field)."""
    types = {f.name: f.type for f in declared}
    result = retriever_pb2.SearchFilter()
    for text in conditions:
        match = _WHERE.match(text)
        if match is None:
            raise UsageError(
                f"--where {text!r}: write FIELD=VALUE, FIELD in A,B, or FIELD<, <=, >, >= NUMBER"
            )
        name, op, value = match.group(1), match.group(2).strip(), match.group(3)
        kind = types.get(name)
        if kind is None:
            known = ", ".join(sorted(types)) or "none"
            raise UsageError(
                f"--where {text!r}: {name} is not a filterable field (this collection's: {known})"
            )
        condition = result.conditions.add(field=name)
        if kind in (retriever_pb2.FIELD_TYPE_INT, retriever_pb2.FIELD_TYPE_FLOAT):
            try:
                number = float(value)
            except ValueError:
                raise UsageError(
                    f"--where {text!r}: {name} is a number field; {value!r} is not a number"
                ) from None
            if op == "=":
                condition.range.gte, condition.range.lte = number, number
            elif op in _RANGE_BOUND:
                setattr(condition.range, _RANGE_BOUND[op], number)
            else:
                raise UsageError(f"--where {text!r}: compare the number field {name} with =, <, <=, > or >=")
            continue
        if op in _RANGE_BOUND:
            raise UsageError(f"--where {text!r}: {name} is not a number field; use = or in")
        values = [v.strip() for v in value.split(",")] if op == "in" else [value]
        typed = [_filter_value(v, kind, text) for v in values]
        if op == "in":
            condition.any_of.values.extend(typed)
        else:
            condition.equals.CopyFrom(typed[0])
    return result


def _filter_value(value: str, kind: int, text: str) -> retriever_pb2.FilterValue:
    if kind == retriever_pb2.FIELD_TYPE_BOOL:
        if value.lower() not in ("true", "false"):
            raise UsageError(f"--where {text!r}: a bool field takes true or false")
        return retriever_pb2.FilterValue(bool_value=value.lower() == "true")
    return retriever_pb2.FilterValue(string_value=value)
