"""The `milvus` gallery store: every collection lives in Milvus, so retriever replicas hold no state.

Layout on the server (prefix `cir` by default):
- `cir_catalog`: one row per (kind, collection): `manifest` (settings, creation time, the data collection's
  name, the stored cosine galleries), `models` (encoder, captioner, dimension; written once, at the first
  ingest) and `updated` (the last write's time). Kept as separate rows so that concurrent writers never
  overwrite each other's part with a stale copy (Milvus upserts whole rows).
- one data collection per suite collection, created at the first write (its vector dimensions need d and R):
  primary key = the image id's UTF-8 bytes in hex (order-preserving, so pages `pk > last` come in id order,
  and never anything but [0-9a-f] inside an expression), uri, content hash, captions and metadata (JSON),
  the raw features (packed float32, base64), the declared filterable fields as typed scalar fields, and the
  searchable vector fields of `milvus_vectors` (exact search: FLAT index, inner product).
- Its name carries a random generation (`cir_d_<hash>_<readable>_<generation>`): a collection dropped and
  created again elsewhere gets a new one, so a replica holding the old name gets "collection not found",
  re-reads the catalog and continues on the new one instead of reading a different schema.

Every write and read uses consistency level Strong: a batch acknowledged to one replica is seen by a search
on any other. Filters become Milvus boolean expressions built only from declared field names (identifiers),
numbers and percent-encoded strings: no caller text is ever pasted into an expression (milvus-lite 2.5's
parser has no expression templates and does not decode escapes such as \\n, so escaping alone could not
express every value).

Milvus-lite (development, tests) has no nullable fields: a value's presence is kept in an ARRAY field
(`present`) and every condition tests it, so an image without a value matches no condition on it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import re
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient, MilvusException

from cir_common.errors import CirError, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from cir_retriever.fusion import normalize
from cir_retriever.gallery.filters import TypedValue, validate_filter
from cir_retriever.gallery.milvus_vectors import (
    COSINE_FIELDS,
    FUSED,
    INSTRUCTCIR,
    WEIMOCIR,
    CosineSpec,
    Layout,
    expand_query,
    gallery_rows,
    preset_cosine_specs,
)
from cir_retriever.gallery.rules import (
    check_same_encoder,
    check_shapes,
    check_targets,
    collection_not_found,
    last_of_each_id,
    now,
    typed_record_metadata,
    validate_collection_name,
)
from cir_retriever.gallery.types import (
    AnnIndex,
    AnyOf,
    CollectionSettings,
    Condition,
    Equals,
    FeaturePage,
    FieldType,
    Filter,
    FilterableField,
    GalleryFeatures,
    GallerySpec,
    Hit,
    ImageRecord,
    Manifest,
    Range,
    settings_from_dict,
    settings_to_dict,
)
from cir_retriever.presets import PRESETS

T = TypeVar("T")

_PREFIX = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,31}$")
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
# Characters a string literal in our expressions may hold: hex keys, percent-encoded values, field names.
_LITERAL_SAFE = re.compile(r"^[A-Za-z0-9_.~%:-]*$")
_FORMAT = 1

# Milvus limits (defaults of Milvus 2.5 and of milvus-lite): VARCHAR length in bytes, rows a query or a search
# may return, the gRPC message a request may be.
_MAX_VARCHAR = 65535
_MAX_JSON_BYTES = 65535
_MAX_RESULT_WINDOW = 16384
_MAX_REQUEST_BYTES = 48 * 1024 * 1024
_MAX_ID_BYTES = _MAX_VARCHAR // 2  # the primary key is the id in hex
_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
_EXPR_ID_CHUNK = 512

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_CONSISTENCY = "Strong"
# milvus-lite answers only FLAT, IVF_FLAT and AUTOINDEX; HNSW needs a Milvus server.
_ANN_INDEXES: dict[AnnIndex, tuple[str, dict[str, int], Callable[[int], dict[str, int]]]] = {
    AnnIndex.EXACT: ("FLAT", {}, lambda k: {}),
    AnnIndex.HNSW: ("HNSW", {"M": 16, "efConstruction": 200}, lambda k: {"ef": max(k, 256)}),
    AnnIndex.IVF: ("IVF_FLAT", {"nlist": 1024}, lambda k: {"nprobe": 128}),
}
_FIELD_TYPES = {
    FieldType.STRING: DataType.VARCHAR,
    FieldType.INT: DataType.INT64,
    FieldType.FLOAT: DataType.DOUBLE,
    FieldType.BOOL: DataType.BOOL,
}
# A stored value where an image has none (presence says it is absent, so it never matches).
_PLACEHOLDER: dict[FieldType, TypedValue] = {
    FieldType.STRING: "",
    FieldType.INT: 0,
    FieldType.FLOAT: 0.0,
    FieldType.BOOL: False,
}
_SCALAR_OUTPUT = ["pk", "uri", "sha256", "captions", "metadata", "raw"]


def _redacted(uri: str) -> str:
    """The URI without user info, for messages (a token or password must never reach a caller or a log)."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# --- encodings ------------------------------------------------------------------------------------------


def encode_id(image_id: str) -> str:
    """The primary key of an image id: its UTF-8 bytes in lowercase hex (keeps the ids' order)."""
    try:
        raw = image_id.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"image id {image_id[:64]!r} is not valid UTF-8") from None
    if len(raw) > _MAX_ID_BYTES:
        raise InvalidArgument(
            f"image id {image_id[:64]!r}… is {len(raw)} bytes; the milvus store keeps ids up to "
            f"{_MAX_ID_BYTES} bytes"
        )
    return raw.hex()


def lookup_key(image_id: str) -> str | None:
    """The primary key to look an id up by; None for an id no image can have (too long to store): a lookup of
    it finds nothing (NOT_FOUND upstream), where a write of it is refused."""
    try:
        return encode_id(image_id)
    except InvalidArgument:
        return None


def decode_id(key: str) -> str:
    return bytes.fromhex(key).decode("utf-8")


def encode_string_value(value: str) -> str:
    """A string field's stored (and compared) form: percent-encoded UTF-8, readable for plain values."""
    return quote(value, safe="")


def _literal(text: str) -> str:
    """A double-quoted expression literal; only ever given encoded text, which needs no escaping."""
    if not _LITERAL_SAFE.match(text):
        raise ValueError(f"refusing to put {text[:64]!r} into a Milvus expression")
    return f'"{text}"'


def _pack(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _unpack(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32).reshape(shape)


# --- filters --------------------------------------------------------------------------------------------


def _value_field(name: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"not a field identifier: {name[:64]!r}")
    return f"f_{name}"


def _scalar(field_type: FieldType, value: TypedValue) -> str:
    """One typed value as expression text: percent-encoded strings, true/false, integers, finite floats."""
    if field_type is FieldType.STRING:
        return _literal(encode_string_value(str(value)))
    if field_type is FieldType.BOOL:
        return "true" if value else "false"
    raise ValueError(f"no equality literal for {field_type}")


def _int_bounds(test: Range) -> tuple[int | None, int | None] | None:
    """Inclusive integer bounds with the meaning of `test` on integers (None when nothing can match).

    Milvus refuses a float literal against an INT64 field, so bounds become integers: v > 2.5 is v >= 3.
    """
    low: int | None = None
    high: int | None = None
    if test.gt is not None:
        low = math.floor(test.gt) + 1
    if test.gte is not None:
        low = max(low, math.ceil(test.gte)) if low is not None else math.ceil(test.gte)
    if test.lt is not None:
        high = math.ceil(test.lt) - 1
    if test.lte is not None:
        high = min(high, math.floor(test.lte)) if high is not None else math.floor(test.lte)
    if (low is not None and high is not None and low > high) or (low is not None and low > _INT64_MAX):
        return None
    if high is not None and high < _INT64_MIN:
        return None
    # Bounds beyond the int64 range hold for every stored value: leave that side open.
    return (low if low is not None and low > _INT64_MIN else None), (
        high if high is not None and high < _INT64_MAX else None
    )


def condition_expression(condition: Condition, field_type: FieldType) -> str | None:
    """One validated condition as a Milvus expression (None when it can match nothing)."""
    column = _value_field(condition.field)
    present = f"array_contains(present, {_literal(condition.field)})"
    test = condition.test
    if isinstance(test, Equals):
        body = f"{column} == {_scalar(field_type, test.value)}"
    elif isinstance(test, AnyOf):
        body = f"{column} in [{', '.join(_scalar(field_type, v) for v in test.values)}]"
    elif field_type is FieldType.INT:
        bounds = _int_bounds(test)
        if bounds is None:
            return None
        parts = [f"{column} >= {bounds[0]}"] if bounds[0] is not None else []
        parts += [f"{column} <= {bounds[1]}"] if bounds[1] is not None else []
        body = " and ".join(parts) or "true"
    else:
        parts = []
        for operator, bound in ((">", test.gt), (">=", test.gte), ("<", test.lt), ("<=", test.lte)):
            if bound is not None:
                number = float(bound)
                if not math.isfinite(number):
                    raise ValueError("range bounds must be finite")
                parts.append(f"{column} {operator} {number!r}")
        body = " and ".join(parts)
    if body == "true":
        return present
    return f"({present} and {body})"


def filter_expression(where: Filter | None, fields: Sequence[FilterableField]) -> str | None:
    """The whole filter as one expression: "" for none, None when no image can match."""
    if where is None or not where.conditions:
        return ""
    validate_filter(where, fields)
    types = {spec.name: spec.type for spec in fields}
    parts = []
    for condition in where.conditions:
        part = condition_expression(condition, types[condition.field])
        if part is None:
            return None
        parts.append(part)
    return " and ".join(parts)


# --- the connection -------------------------------------------------------------------------------------


class _Missing(NotFound):
    """Milvus says a collection does not exist. Callers handle it (a data collection not created yet, or
    dropped and created again elsewhere); one that escapes reads as NOT_FOUND."""


def _status_code(error: BaseException) -> object:
    code = getattr(error, "code", None)
    return code() if callable(code) else code


class _Connection:
    """One lazily connected MilvusClient and the mapping of its errors onto the suite's."""

    def __init__(self, uri: str, token: str, timeout_s: float) -> None:
        self.uri = uri
        self.shown_uri = _redacted(uri)
        self._token = token
        self.timeout_s = timeout_s
        self._client: MilvusClient | None = None
        self._lock = threading.Lock()

    def client(self) -> MilvusClient:
        with self._lock:
            if self._client is None:
                try:
                    # dedicated: our own channel, so that close() never closes another store's.
                    self._client = MilvusClient(
                        uri=self.uri, token=self._token, timeout=self.timeout_s, dedicated=True
                    )
                except MilvusException as error:
                    raise Unavailable(f"Milvus at {self.shown_uri} is unreachable: {error.message}") from None
            return self._client

    def call(self, action: str, work: Callable[[MilvusClient], T]) -> T:
        """Runs `work`; Unavailable when the server cannot be reached, _Missing for an unknown collection."""
        client = self.client()
        try:
            return work(client)
        except MilvusException as error:
            raise self._mapped(action, error) from None
        except grpc.RpcError as error:
            raise self._mapped(action, error) from None

    def _mapped(self, action: str, error: BaseException) -> Exception:
        code = _status_code(error)
        message = getattr(error, "message", "") or (
            error.details() if isinstance(error, grpc.RpcError) else str(error)
        )
        if code == 100 or "collection not found" in str(message).lower():
            return _Missing(f"Milvus at {self.shown_uri} has no such collection ({action}): {message}")
        unreachable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
        if code in unreachable or code == 2 or "server unavailable" in str(message).lower():
            return Unavailable(f"Milvus at {self.shown_uri} is unreachable ({action}): {message}")
        return CirError(f"Milvus at {self.shown_uri} failed to {action}: {message}")

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                try:
                    self._client.close()
                finally:
                    self._client = None


# --- the catalog ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meta:
    """A collection's manifest row: what was fixed at creation."""

    name: str
    settings: CollectionSettings
    created_at: str
    data: str  # the data collection (this generation)
    cosine: tuple[CosineSpec, ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": _FORMAT,
                "name": self.name,
                "settings": asdict(self.settings),
                "created_at": self.created_at,
                "data": self.data,
                "cosine": [[c.gamma, c.renormalized] for c in self.cosine],
            }
        )

    @staticmethod
    def from_dict(data: dict[str, Any]) -> _Meta:
        return _Meta(
            name=data["name"],
            settings=settings_from_dict(data["settings"]),
            created_at=data["created_at"],
            data=data["data"],
            cosine=tuple(CosineSpec(float(g), bool(r)) for g, r in data["cosine"]),
        )


class MilvusGalleryStore:
    """All collections of one suite on one Milvus server (`prefix` separates suites sharing a server)."""

    def __init__(self, uri: str, token: str = "", *, prefix: str = "cir", timeout_s: float = 30.0) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"prefix {prefix!r} must be 1-32 letters and digits, starting with a letter")
        self.uri = uri
        self.prefix = prefix
        self._conn = _Connection(uri, token, timeout_s)
        self._catalog = f"{prefix}_catalog"
        self._catalog_ready = False
        self._lock = threading.Lock()
        # Layouts of data collections seen to exist (a name is never reused: its generation is random).
        self._layouts: dict[str, Layout] = {}

    # -- catalog ---------------------------------------------------------------------------------------------

    def _ensure_catalog(self) -> None:
        if self._catalog_ready:
            return

        def create(client: MilvusClient) -> None:
            if client.has_collection(self._catalog, timeout=self._conn.timeout_s):
                return
            schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
            schema.add_field("kind", DataType.VARCHAR, max_length=32)
            schema.add_field("value", DataType.VARCHAR, max_length=_MAX_VARCHAR)
            # Milvus collections need a vector field; the catalog is only ever queried by key.
            schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
            index = client.prepare_index_params()
            index.add_index(field_name="unused", index_type="FLAT", metric_type="IP")
            # Creating an existing collection with the same schema succeeds: two replicas may race here.
            client.create_collection(
                self._catalog,
                schema=schema,
                index_params=index,
                consistency_level=_CONSISTENCY,
                timeout=self._conn.timeout_s,
            )

        self._conn.call("create the catalog", create)
        self._catalog_ready = True

    def _catalog_call(self, action: str, work: Callable[[MilvusClient], T]) -> T:
        self._ensure_catalog()
        try:
            return self._conn.call(action, work)
        except _Missing:
            self._catalog_ready = False  # dropped behind our back: create it again, once
            self._ensure_catalog()
            try:
                return self._conn.call(action, work)
            except _Missing as error:
                raise CirError(f"Milvus at {self._conn.shown_uri}: the catalog vanished ({error})") from None

    def _catalog_rows(self, name: str) -> dict[str, dict[str, Any]]:
        keys = [f"{kind}:{name}" for kind in ("manifest", "models", "updated")]
        rows = self._catalog_call(
            "read the catalog",
            lambda c: c.query(
                self._catalog,
                filter=f"key in [{', '.join(_literal(k) for k in keys)}]",
                output_fields=["key", "value"],
                consistency_level=_CONSISTENCY,
                timeout=self._conn.timeout_s,
            ),
        )
        return {row["key"].split(":", 1)[0]: json.loads(row["value"]) for row in rows}

    def _write_catalog(self, kind: str, name: str, value: str) -> None:
        row = {"key": f"{kind}:{name}", "kind": kind, "value": value, "unused": [0.0, 0.0]}
        self._catalog_call(
            "write the catalog", lambda c: c.upsert(self._catalog, [row], timeout=self._conn.timeout_s)
        )

    def _read_meta(self, name: str) -> _Meta:
        rows = self._catalog_rows(name)
        if "manifest" not in rows:
            raise self._not_found(name)
        return _Meta.from_dict(rows["manifest"])

    def _not_found(self, name: str) -> NotFound:
        return collection_not_found(name)

    # -- data collections ------------------------------------------------------------------------------------

    def _stem(self, name: str) -> str:
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        return f"{self.prefix}_d_{digest}_"

    def _new_data_name(self, name: str) -> str:
        readable = re.sub(r"[^A-Za-z0-9]", "_", name)[:64]
        return f"{self._stem(name)}{readable}_{secrets.token_hex(8)}"

    def known_layout(self, data: str) -> Layout | None:
        with self._lock:
            return self._layouts.get(data)

    def forget(self, data: str) -> None:
        with self._lock:
            self._layouts.pop(data, None)

    def describe(self, meta: _Meta) -> Layout | None:
        """The layout of `meta`'s data collection, None when it does not exist (yet)."""
        cached = self.known_layout(meta.data)
        if cached is not None:
            return cached
        if not self._conn.call(
            "look up a collection", lambda c: c.has_collection(meta.data, timeout=self._conn.timeout_s)
        ):
            return None
        try:
            info = self._conn.call(
                "describe a collection",
                lambda c: c.describe_collection(meta.data, timeout=self._conn.timeout_s),
            )
        except _Missing:
            return None
        dims = {f["name"]: int(f["params"]["dim"]) for f in info["fields"] if "dim" in f.get("params", {})}
        dim = dims[FUSED] // 3
        layout = Layout(
            dim=dim,
            slots=dims[WEIMOCIR] // dim - 2,
            cosine=meta.cosine,
            instructcir_dim=dims.get(INSTRUCTCIR, 0),
        )
        with self._lock:
            self._layouts[meta.data] = layout
        return layout

    def create_data(self, meta: _Meta, layout: Layout) -> Layout:
        """Creates `meta`'s data collection for `layout` (or finds it); returns the layout it has."""
        index_type, build, _ = _ANN_INDEXES[meta.settings.ann]
        timeout = self._conn.timeout_s

        def create(client: MilvusClient) -> None:
            schema = MilvusClient.create_schema(
                auto_id=False, enable_dynamic_field=False, description=f"cir gallery {meta.name}"
            )
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=_MAX_VARCHAR)
            schema.add_field("uri", DataType.VARCHAR, max_length=_MAX_VARCHAR)
            schema.add_field("sha256", DataType.VARCHAR, max_length=64)
            schema.add_field("captions", DataType.JSON)
            schema.add_field("metadata", DataType.JSON)
            # The raw features in one JSON object of base64 strings: pymilvus 2.6 checks a VARCHAR value in
            # a Python loop per character (measured: 70% of an insert's time at d 768); JSON it encodes
            # natively.
            schema.add_field("raw", DataType.JSON)
            fields = meta.settings.filterable_fields
            schema.add_field(
                "present",
                DataType.ARRAY,
                element_type=DataType.VARCHAR,
                max_capacity=max(1, len(fields)),
                max_length=64,
            )
            for spec in fields:
                extra = {"max_length": _MAX_VARCHAR} if spec.type is FieldType.STRING else {}
                schema.add_field(_value_field(spec.name), _FIELD_TYPES[spec.type], **extra)
            index = client.prepare_index_params()
            for field, dim in layout.field_dims().items():
                schema.add_field(field, DataType.FLOAT_VECTOR, dim=dim)
                index.add_index(field_name=field, index_type=index_type, metric_type="IP", params=build)
            client.create_collection(
                meta.data, schema=schema, index_params=index, consistency_level=_CONSISTENCY, timeout=timeout
            )

        try:
            self._conn.call("create a collection", create)
        except CirError as error:
            found = self.describe(meta)
            if found is not None and self._indexed(meta.data, found):
                return found  # another replica created it first (perhaps for other shapes: checked by caller)
            if found is not None:
                # Created, but its index was refused: unusable (never loaded), so it goes.
                self.forget(meta.data)
                self._conn.call("drop a collection", lambda c: c.drop_collection(meta.data, timeout=timeout))
            if meta.settings.ann:
                raise FailedPrecondition(
                    f"Milvus at {self._conn.shown_uri} cannot build the {index_type} index that collection "
                    f"{meta.name!r} asks for (settings.ann = {meta.settings.ann!r}; milvus-lite builds only "
                    f"exact and ivf): {error.message}"
                ) from None
            raise
        found = self.describe(meta)
        if found is None:
            raise CirError(f"Milvus at {self._conn.shown_uri} did not keep collection {meta.data!r}")
        return found

    def _indexed(self, data: str, layout: Layout) -> bool:
        """Whether every vector field of `data` has its index (a collection is loaded only then)."""
        names = self._conn.call("list indexes", lambda c: c.list_indexes(data, timeout=self._conn.timeout_s))
        return set(layout.field_dims()) <= set(names)

    def call(self, action: str, work: Callable[[MilvusClient], T]) -> T:
        return self._conn.call(action, work)

    @property
    def timeout_s(self) -> float:
        return self._conn.timeout_s

    # -- GalleryStore ----------------------------------------------------------------------------------------

    def create(self, name: str, settings: CollectionSettings) -> MilvusCollection:
        validate_collection_name(name)
        rows = self._catalog_rows(name)
        if "manifest" not in rows:
            presets = [(p.gamma, p.caption_features_renormalized) for p in PRESETS.values()]
            meta = _Meta(
                name=name,
                settings=settings,
                created_at=now(),
                data=self._new_data_name(name),
                cosine=preset_cosine_specs(presets),
            )
            self._write_catalog("manifest", name, meta.to_json())
        # Read back: of two replicas creating one name at once, both must end up with the winner's row.
        existing = self._read_meta(name)
        if existing.settings != settings:
            raise FailedPrecondition(
                f"collection {name!r} already exists with settings {settings_to_dict(existing.settings)}; "
                "delete it first or use another name"
            )
        return MilvusCollection(self, existing)

    def open(self, name: str) -> MilvusCollection:
        validate_collection_name(name)
        return MilvusCollection(self, self._read_meta(name))

    def exists(self, name: str) -> bool:
        validate_collection_name(name)
        return "manifest" in self._catalog_rows(name)

    def names(self) -> list[str]:
        found: list[str] = []
        last = ""
        while True:
            rows = self._catalog_call(
                "list collections",
                lambda c, after=last: c.query(
                    self._catalog,
                    filter=f'kind == "manifest" and key > {_literal(after)}',
                    output_fields=["key"],
                    limit=_MAX_RESULT_WINDOW,
                    consistency_level=_CONSISTENCY,
                    timeout=self._conn.timeout_s,
                ),
            )
            if not rows:
                break
            keys = sorted(row["key"] for row in rows)
            found += [key.split(":", 1)[1] for key in keys]
            last = keys[-1]
        return sorted(found)

    def drop(self, name: str) -> int:
        validate_collection_name(name)
        meta = self._read_meta(name)
        size = MilvusCollection(self, meta).size()
        keys = [f"{kind}:{name}" for kind in ("manifest", "models", "updated")]
        # The catalog first: from here on no replica opens it; then every generation of its data (a replica
        # that lost a race may have left one behind).
        self._catalog_call(
            "delete from the catalog",
            lambda c: c.delete(
                self._catalog,
                filter=f"key in [{', '.join(_literal(k) for k in keys)}]",
                timeout=self._conn.timeout_s,
            ),
        )
        stem = self._stem(name)
        for data in self._conn.call(
            "list collections", lambda c: c.list_collections(timeout=self._conn.timeout_s)
        ):
            if data.startswith(stem):
                self.forget(data)
                with contextlib.suppress(_Missing):  # dropped by someone else meanwhile: as good
                    self._conn.call(
                        "drop a collection",
                        lambda c, d=data: c.drop_collection(d, timeout=self._conn.timeout_s),
                    )
        return size

    def check(self) -> None:
        """Unavailable unless the server answers (the readiness probe)."""
        self._conn.call("answer", lambda c: c.has_collection(self._catalog, timeout=min(5.0, self.timeout_s)))

    def close(self) -> None:
        self._conn.close()


class MilvusCollection:
    """One collection; holds only the manifest row it was opened with, refreshed when Milvus says it moved."""

    def __init__(self, store: MilvusGalleryStore, meta: _Meta) -> None:
        self._store = store
        self._meta = meta
        self.name = meta.name
        self._lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------------------------

    def _refresh(self) -> _Meta:
        """Re-reads the manifest row (NotFound once the collection was dropped)."""
        meta = self._store._read_meta(self.name)
        with self._lock:
            self._meta = meta
        return meta

    def _current(self) -> tuple[_Meta, Layout | None]:
        """The manifest row and the data collection's layout (None before the first write)."""
        meta = self._meta
        layout = self._store.describe(meta)
        if layout is None:
            # No data collection under our name: never written, or dropped (and maybe re-created) elsewhere.
            meta = self._refresh()
            layout = self._store.describe(meta)
        return meta, layout

    def _on_data(self, action: str, work: Callable[[MilvusClient, _Meta, Layout], T], empty: T) -> T:
        """Runs `work` on the data collection; `empty` when there is none; follows one re-creation."""
        for attempt in range(2):
            meta, layout = self._current()
            if layout is None:
                return empty
            try:
                return self._store.call(action, lambda c, m=meta, lay=layout: work(c, m, lay))
            except _Missing:
                self._store.forget(meta.data)
                if attempt:
                    raise
                self._refresh()
        raise AssertionError("unreachable")

    # -- manifest --------------------------------------------------------------------------------------------

    def manifest(self) -> Manifest:
        rows = self._store._catalog_rows(self.name)
        if "manifest" not in rows:
            raise self._store._not_found(self.name)
        meta = _Meta.from_dict(rows["manifest"])
        models = rows.get("models", {})
        return Manifest(
            name=meta.name,
            settings=meta.settings,
            created_at=meta.created_at,
            updated_at=rows.get("updated", {}).get("updated_at", meta.created_at),
            embedding_dim=int(models.get("dim", 0)),
            encoder=dict(models.get("encoder", {})),
            captioner=dict(models.get("captioner", {})),
            instructcir=dict(models.get("instructcir", {})),
            instructcir_dim=int(models.get("instructcir_dim", 0)),
        )

    def record_models(
        self,
        encoder: dict[str, str],
        captioner: dict[str, str],
        dim: int,
        instructcir: dict[str, str] | None = None,
        instructcir_dim: int = 0,
    ) -> None:
        """Records which models made the vectors; another encoder is refused (its vectors do not compare), and
        so are InstructCIR targets of another checkpoint than the collection keeps (or none / some where it
        keeps some / none)."""
        manifest = self.manifest()
        if not manifest.encoder:
            models: dict[str, Any] = {"encoder": encoder, "captioner": captioner, "dim": dim}
            if instructcir:
                models.update(instructcir=dict(instructcir), instructcir_dim=instructcir_dim)
            self._store._write_catalog("models", self.name, json.dumps(models))
            # Read back: two replicas recording different encoders at once: the one whose row lost is refused.
            manifest = self.manifest()
        check_same_encoder(manifest, encoder, dim, instructcir, instructcir_dim)

    def _touch(self) -> None:
        self._store._write_catalog("updated", self.name, json.dumps({"updated_at": now()}))

    # -- records ---------------------------------------------------------------------------------------------

    def _query_keys(self, keys: list[str], output: list[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), _EXPR_ID_CHUNK):
            chunk = keys[start : start + _EXPR_ID_CHUNK]
            expr = f"pk in [{', '.join(_literal(k) for k in chunk)}]"
            count = len(chunk)
            found += self._on_data(
                "read images",
                lambda c, meta, layout, e=expr, n=count: c.query(
                    meta.data,
                    filter=e,
                    output_fields=output,
                    limit=n,
                    consistency_level=_CONSISTENCY,
                    timeout=self._store.timeout_s,
                ),
                [],
            )
        return found

    def content_hashes(self, ids: Sequence[str]) -> dict[str, str]:
        keys = [k for k in dict.fromkeys(lookup_key(i) for i in ids) if k is not None]
        return {decode_id(row["pk"]): row["sha256"] for row in self._query_keys(keys, ["pk", "sha256"])}

    def upsert(self, records: Sequence[ImageRecord]) -> None:
        """Writes a batch with one Milvus upsert (idempotent by id); visible to every search once it returns.

        Everything is checked before anything is written. A batch larger than one request (about 48 MiB of
        vectors) is written in several, each all or nothing; ingestion's batches are far below that.
        """
        records = last_of_each_id(records)
        if not records:
            return
        meta, layout = self._current()
        fields = meta.settings.filterable_fields
        typed = [typed_record_metadata(record, fields) for record in records]
        if layout is None:
            manifest = self.manifest()
            dim = manifest.embedding_dim or int(records[0].image_raw.shape[-1])
            slots = int(records[0].caption_slots.shape[0]) if records[0].caption_slots.ndim == 2 else 0
            # The data collection gets the InstructCIR field when the models recorded at the first write name
            # a checkpoint (ingestion and import record them before writing).
            targets_dim = manifest.instructcir_dim
        else:
            dim, slots, targets_dim = layout.dim, layout.slots, layout.instructcir_dim
        check_shapes(records, dim, slots)
        check_targets(records, self.name, targets_dim)
        wanted = Layout(dim=dim, slots=slots, cosine=meta.cosine, instructcir_dim=targets_dim)
        rows = _rows(records, typed, fields, wanted)
        if layout is None:
            layout = self._store.create_data(meta, wanted)
            if (layout.dim, layout.slots) != (dim, slots):
                check_shapes(records, layout.dim, layout.slots)  # raises: created elsewhere for other shapes
            check_targets(records, self.name, layout.instructcir_dim)
        step = max(1, _MAX_REQUEST_BYTES // max(_row_bytes(row) for row in rows))
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]  # vectors stay numpy arrays: pymilvus takes them as they are
            self._write(chunk, meta, wanted)
        self._touch()

    def _write(self, chunk: list[dict[str, Any]], meta: _Meta, layout: Layout) -> None:
        for attempt in range(2):
            try:
                self._store.call(
                    "write images", lambda c, m=meta: c.upsert(m.data, chunk, timeout=self._store.timeout_s)
                )
                return
            except _Missing:
                # Dropped and perhaps created again elsewhere: write into the current generation, once.
                self._store.forget(meta.data)
                if attempt:
                    raise self._store._not_found(self.name) from None
                meta = self._refresh()
                found = self._store.describe(meta) or self._store.create_data(meta, layout)
                if (found.dim, found.slots) != (layout.dim, layout.slots):
                    raise FailedPrecondition(
                        f"collection {self.name!r} was re-created elsewhere for other vector shapes "
                        f"(d {found.dim}, {found.slots} caption slots)"
                    ) from None

    def delete(self, ids: Sequence[str]) -> tuple[int, list[str]]:
        present = set(self.content_hashes(ids))
        keys = sorted(encode_id(i) for i in present)
        for start in range(0, len(keys), _EXPR_ID_CHUNK):
            expr = f"pk in [{', '.join(_literal(k) for k in keys[start : start + _EXPR_ID_CHUNK])}]"
            self._on_data(
                "delete images",
                lambda c, meta, layout, e=expr: c.delete(meta.data, filter=e, timeout=self._store.timeout_s),
                None,
            )
        if present:
            self._touch()
        return len(present), [i for i in ids if i not in present]

    def get(self, image_id: str) -> ImageRecord | None:
        _, layout = self._current()
        if layout is None:
            return None
        key = lookup_key(image_id)
        rows = self._query_keys([key], _SCALAR_OUTPUT) if key is not None else []
        return _record(rows[0], layout) if rows else None

    def size(self) -> int:
        rows = self._on_data(
            "count images",
            lambda c, meta, layout: c.query(
                meta.data,
                filter="",
                output_fields=["count(*)"],
                consistency_level=_CONSISTENCY,
                timeout=self._store.timeout_s,
            ),
            [],
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def caption_slot_count(self) -> int:
        """R, the caption slots each stored image has (0 while empty)."""
        _, layout = self._current()
        if layout is None:
            return 0
        any_row = self._on_data(
            "read images",
            lambda c, meta, lay: c.query(
                meta.data,
                filter="",
                output_fields=["pk"],
                limit=1,
                consistency_level=_CONSISTENCY,
                timeout=self._store.timeout_s,
            ),
            [],
        )
        return layout.slots if any_row else 0

    # -- search ----------------------------------------------------------------------------------------------

    def search(self, spec: GallerySpec, query: np.ndarray, k: int, where: Filter | None = None) -> list[Hit]:
        """The exact top-k (FLAT index, inner product) among the images matching `where`."""
        if k <= 0:
            return []
        meta, layout = self._current()
        expression = filter_expression(where, meta.settings.filterable_fields)
        if layout is None or expression is None:
            return []
        _, _, search_params = _ANN_INDEXES[meta.settings.ann]
        limit = min(k, _MAX_RESULT_WINDOW)

        def run(client: MilvusClient, m: _Meta, lay: Layout) -> list[Hit]:
            field, vector = expand_query(lay, spec, query)
            results = client.search(
                m.data,
                data=[vector.astype(np.float32).tolist()],
                anns_field=field,
                limit=limit,
                filter=expression,
                output_fields=["uri", "metadata"],
                search_params={"metric_type": "IP", "params": search_params(limit)},
                consistency_level=_CONSISTENCY,
                timeout=self._store.timeout_s,
            )
            return [
                Hit(
                    id=decode_id(hit["id"]),
                    score=float(hit["distance"]),
                    uri=hit["entity"]["uri"],
                    metadata=dict(hit["entity"]["metadata"]),
                )
                for hit in results[0]
            ]

        return self._on_data("search", run, [])

    # -- export ----------------------------------------------------------------------------------------------

    def export(self, page_size: int) -> Iterator[FeaturePage]:
        """Every image, in id order (primary keys are the ids' bytes in hex, which sort as the ids do)."""
        if page_size <= 0:
            raise InvalidArgument(f"page_size = {page_size}: give a positive page size")
        total = self.size()
        _, layout = self._current()
        if layout is None:
            return iter(())
        return self._pages(page_size, layout, total)

    def _pages(self, page_size: int, layout: Layout, total: int) -> Iterator[FeaturePage]:
        # Keep each Milvus response bounded: raw features are base64 (4/3 of 4 bytes per component).
        row_bytes = int(4 * (layout.dim * (layout.slots + 2) + layout.instructcir_dim) * 4 / 3) + 2048
        per_query = max(1, min(_MAX_RESULT_WINDOW, _MAX_RESPONSE_BYTES // row_bytes))
        last = ""
        done = False
        while not done:
            rows: list[dict[str, Any]] = []
            while len(rows) < page_size:
                want = min(per_query, page_size - len(rows))
                after = last
                batch = self._on_data(
                    "export images",
                    lambda c, meta, lay, a=after, n=want: c.query(
                        meta.data,
                        filter=f"pk > {_literal(a)}",
                        output_fields=_SCALAR_OUTPUT,
                        limit=n,
                        consistency_level=_CONSISTENCY,
                        timeout=self._store.timeout_s,
                    ),
                    [],
                )
                batch.sort(key=lambda row: row["pk"])  # Milvus answers in key order; sorting costs nothing
                if batch and batch[0]["pk"] <= last:
                    raise CirError(f"Milvus returned keys out of order while exporting {self.name!r}")
                rows += batch
                if len(batch) < want:
                    done = True
                    break
                last = batch[-1]["pk"]
            if not rows:
                return
            yield _page([_record(row, layout) for row in rows], layout, total)


# --- rows and records -----------------------------------------------------------------------------------


def _rows(
    records: Sequence[ImageRecord],
    typed: Sequence[dict[str, TypedValue]],
    fields: Sequence[FilterableField],
    layout: Layout,
) -> list[dict[str, Any]]:
    image_raw = np.stack([r.image_raw for r in records]).astype(np.float32)
    targets = [r.instructcir_target for r in records]
    vectors = gallery_rows(
        layout,
        normalize(image_raw),
        np.stack([r.caption_mean for r in records]).astype(np.float32),
        np.stack([r.caption_slots for r in records]).astype(np.float32),
        None if any(t is None for t in targets) else np.stack(targets),  # type: ignore[arg-type]
    )
    rows = []
    for n, (record, values) in enumerate(zip(records, typed, strict=True)):
        row: dict[str, Any] = {
            "pk": encode_id(record.id),
            "uri": record.uri,
            "sha256": record.content_sha256,
            "captions": list(record.captions),
            "metadata": dict(record.metadata),
            "raw": {
                "image": _pack(record.image_raw),
                "mean": _pack(record.caption_mean),
                "slots": _pack(record.caption_slots),
                # the target again, packed: `get` and export read records from here, not from vector fields
                **(
                    {"instructcir": _pack(record.instructcir_target)}
                    if record.instructcir_target is not None
                    else {}
                ),
            },
            "present": [spec.name for spec in fields if spec.name in values],
        }
        for spec in fields:
            value = values.get(spec.name, _PLACEHOLDER[spec.type])
            if spec.type is FieldType.STRING:
                value = encode_string_value(str(value))
            row[_value_field(spec.name)] = value
        for name, matrix in vectors.items():
            row[name] = matrix[n]
        _check_sizes(record, row)
        rows.append(row)
    return rows


def _check_sizes(record: ImageRecord, row: dict[str, Any]) -> None:
    """Milvus' per-value limits, as InvalidArgument naming the image (instead of a server error later)."""
    checks = [
        ("uri", len(row["uri"].encode("utf-8", "surrogatepass")), _MAX_VARCHAR),
        ("captions", len(json.dumps(row["captions"]).encode()), _MAX_JSON_BYTES),
        ("metadata", len(json.dumps(row["metadata"]).encode()), _MAX_JSON_BYTES),
        ("raw features", len(json.dumps(row["raw"])), _MAX_JSON_BYTES),
    ]
    for what, size, limit in checks:
        if size > limit:
            raise InvalidArgument(
                f"image {record.id[:128]!r}: its {what} take {size} bytes; the milvus store keeps at most "
                f"{limit}"
            )
    for name, value in row.items():
        if name.startswith("f_") and isinstance(value, str) and len(value) > _MAX_VARCHAR:
            raise InvalidArgument(f"image {record.id[:128]!r}: metadata {name[2:]} is too long to filter on")


def _row_bytes(row: dict[str, Any]) -> int:
    """About what a row takes in a request: vectors at 4 bytes a component, text as its length."""
    size = 0
    for value in row.values():
        if isinstance(value, np.ndarray):
            size += value.nbytes
        elif isinstance(value, str):
            size += len(value)
        else:
            size += len(json.dumps(value))
    return size


def _record(row: dict[str, Any], layout: Layout) -> ImageRecord:
    d = layout.dim
    return ImageRecord(
        id=decode_id(row["pk"]),
        uri=row["uri"],
        metadata=dict(row["metadata"]),
        content_sha256=row["sha256"],
        captions=list(row["captions"]),
        image_raw=_unpack(row["raw"]["image"], (d,)),
        caption_mean=_unpack(row["raw"]["mean"], (d,)),
        caption_slots=_unpack(row["raw"]["slots"], (layout.slots, d)),
        instructcir_target=_unpack(row["raw"]["instructcir"], (layout.instructcir_dim,))
        if "instructcir" in row["raw"]
        else None,
    )


def _page(records: list[ImageRecord], layout: Layout, total: int) -> FeaturePage:
    image_raw = np.stack([r.image_raw for r in records])
    return FeaturePage(
        ids=[r.id for r in records],
        uris=[r.uri for r in records],
        features=GalleryFeatures(
            t_v=normalize(image_raw),
            caption_mean=np.stack([r.caption_mean for r in records]),
            caption_slots=np.stack([r.caption_slots for r in records]).reshape(
                len(records), layout.slots, layout.dim
            ),
            instructcir_target=None
            if any(r.instructcir_target is None for r in records)
            else np.stack([r.instructcir_target for r in records]),  # type: ignore[misc]
        ),
        total=total,
        image_raw=image_raw,
        captions=[r.captions for r in records],
        content_sha256=[r.content_sha256 for r in records],
        metadata=[r.metadata for r in records],
    )


__all__ = [
    "COSINE_FIELDS",
    "MilvusCollection",
    "MilvusGalleryStore",
    "condition_expression",
    "decode_id",
    "encode_id",
    "filter_expression",
]
