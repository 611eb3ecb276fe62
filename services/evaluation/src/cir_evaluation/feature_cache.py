"""The evaluation's on-disk cache: gallery features and, per query, the model outputs behind its ranking.

Layout under the run's --out folder:
  features/gallery-<key>.npz            ids, t_v, caption_mean, caption_slots (and instructcir_target when
                                        the collection keeps InstructCIR targets) of one gallery
  features/queries-<signature>.jsonl    one line per finished query: LLM outputs + raw query features
  ingest/<collection>.done              ids the retriever committed (resume skips them)

A query file is appended one line per query as soon as it finishes, so an interrupted run resumes
where it stopped. The signature names what determines the query-side features (the strategy's
requirements, the edit template and caption selection): runs that differ only in weights share it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from cir_common.errors import InvalidArgument
from cir_common.vectors import pack_f32, pack_f32_matrix, unpack_f32, unpack_f32_matrix
from cir_retriever.gallery.types import GalleryFeatures
from cir_retriever.strategies import Options, QueryInputs, StrategyName, requirements


def input_signature(strategy: StrategyName, options: Options) -> str:
    """Names the query features a strategy with these options computes (weights do not change them)."""
    needs = requirements(strategy, options)
    uses_template = needs.edits is not None
    described = {
        # An absent InstructCIR need is left out: the signatures (cache file names) of the strategies that
        # came before it stay what they were.
        "needs": {
            k: (str(v) if v is not None else None)
            for k, v in asdict(needs).items()
            if k != "instructcir" or v is not None
        },
        "edit_template": options.edit_template if uses_template else "",
        "objects_caption_selection": str(options.objects_caption_selection) if needs.objects else "",
        "weimocir_slots": strategy is StrategyName.WEIMOCIR,
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:10]
    return f"{strategy.value}-{digest}"


def _encode(array: np.ndarray) -> dict[str, str]:
    packed = pack_f32(array) if array.ndim == 1 else pack_f32_matrix(array)
    return {"vector" if array.ndim == 1 else "matrix": base64.b64encode(packed).decode("ascii")}


def _decode(blob: dict[str, str]) -> np.ndarray:
    if "vector" in blob:
        return unpack_f32(base64.b64decode(blob["vector"]))
    return unpack_f32_matrix(base64.b64decode(blob["matrix"]))


@dataclass
class QueryRecord:
    """One finished query: the service's answer, what the LLM said, and the raw query features."""

    query_id: str
    service_ranking: list[str]
    service_scores: list[float]
    inputs: QueryInputs
    captions: list[str] = field(default_factory=list)
    edited_captions: list[str] = field(default_factory=list)
    added_objects: str = ""
    prompt: str = ""
    degradations: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        # Every QueryInputs field that was computed (`image` always is); None ones are not written.
        features = {
            f.name: _encode(getattr(self.inputs, f.name))
            for f in fields(QueryInputs)
            if getattr(self.inputs, f.name) is not None
        }
        body = {
            "query_id": self.query_id,
            "service_ranking": self.service_ranking,
            "service_scores": self.service_scores,
            "captions": self.captions,
            "edited_captions": self.edited_captions,
            "added_objects": self.added_objects,
            "prompt": self.prompt,
            "degradations": self.degradations,
            "features": features,
        }
        return json.dumps(body, ensure_ascii=False)

    @classmethod
    def from_body(cls, body: dict) -> QueryRecord:
        """From one parsed cache line (the object `to_json` wrote)."""
        body = dict(body)
        features = {name: _decode(blob) for name, blob in body.pop("features").items()}
        inputs = QueryInputs(image=features.pop("image"), **features)
        return cls(inputs=inputs, **body)


class QueryCache:
    """Append-only JSON lines of QueryRecords for one input signature."""

    def __init__(self, out: Path, signature: str) -> None:
        self.path = out / "features" / f"queries-{signature}.jsonl"

    def load(self) -> dict[str, QueryRecord]:
        records: dict[str, QueryRecord] = {}
        for number, body in self._bodies():
            try:
                records[body["query_id"]] = QueryRecord.from_body(body)
            except (ValueError, KeyError, TypeError, InvalidArgument) as error:
                raise ValueError(f"{self.path}:{number} is not a query record: {error!r}") from error
        return records

    def ids(self) -> set[str]:
        """The cached query ids, without decoding any features (what a resumed run needs to know)."""
        return {body["query_id"] for _, body in self._bodies()}

    def _bodies(self) -> Iterator[tuple[int, dict]]:
        """The complete record lines; a last line cut short by an interrupted run is skipped (that query
        simply runs again), any other unreadable line is an error naming it."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    body = json.loads(line)
                    if not isinstance(body, dict) or "query_id" not in body:
                        raise ValueError("no query_id")
                except ValueError as error:
                    if line.endswith("\n"):
                        raise ValueError(f"{self.path}:{number} is not a query record: {error}") from error
                    continue
                yield number, body

    def append(self, record: QueryRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(record.to_json() + "\n")


def gallery_cache_path(out: Path, key: str) -> Path:
    return out / "features" / f"gallery-{key or 'all'}.npz"


def save_gallery(path: Path, ids: list[str], features: GalleryFeatures) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.npz")
    targets = (
        {} if features.instructcir_target is None else {"instructcir_target": features.instructcir_target}
    )
    np.savez(
        partial,
        ids=np.array(ids, dtype=str),
        t_v=features.t_v,
        caption_mean=features.caption_mean,
        caption_slots=features.caption_slots,
        **targets,
    )
    partial.replace(path)  # never leave a half-written cache under the real name


def gallery_has_targets(path: Path) -> bool:
    """Whether a cached gallery holds InstructCIR targets (one exported by an earlier run may not)."""
    with np.load(path) as data:
        return "instructcir_target" in data.files


def load_gallery(path: Path) -> tuple[list[str], GalleryFeatures]:
    with np.load(path) as data:
        return [str(i) for i in data["ids"]], GalleryFeatures(
            t_v=data["t_v"],
            caption_mean=data["caption_mean"],
            caption_slots=data["caption_slots"],
            instructcir_target=data["instructcir_target"] if "instructcir_target" in data.files else None,
        )


class IngestJournal:
    """Ids a collection has committed, so an interrupted ingestion resumes without resending them."""

    def __init__(self, out: Path, collection: str) -> None:
        self.path = out / "ingest" / f"{collection}.done"

    def done(self) -> set[str]:
        if not self.path.exists():
            return set()
        return {line for line in self.path.read_text(encoding="utf-8").splitlines() if line}

    def add(self, ids: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.writelines(i + "\n" for i in ids)
