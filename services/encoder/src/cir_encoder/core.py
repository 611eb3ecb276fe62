"""The encoder's core: image, text, composed-prompt and InstructCIR embeddings with batching and caching.
No protos here.

`Encoder` is what the gRPC layer (`service.py`) calls after converting a request; it returns dataclasses
(vectors as float32 numpy arrays) and raises `cir_common.errors` types, which the server maps to status
codes. It owns the model (`EncoderEngine`), the micro-batchers, the cache and the process's budget of
decoded image bytes, and checks every limit that does not depend on the wire format.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from cir_common.batching import BatchStats, MicroBatcher
from cir_common.cache import Cache, cache_from_settings, cache_key
from cir_common.errors import InvalidArgument, Unavailable
from cir_common.images import DecodeBudget, DecodeBudgetStats, DecodedImage, content_hash
from cir_common.memo import get_or_compute
from cir_common.service_kit import ImageIntake, ImageReader, StageTimer, pending_items_limit, require_items
from cir_common.vectors import pack_f32, unpack_f32
from cir_common.vocabulary import Preprocessing
from cir_encoder.clip_loading import load_clip
from cir_encoder.engine import PLACEHOLDER, EncoderEngine
from cir_encoder.instructcir_serving import (
    InstructCirModel,
    checkpoint_details,
    checkpoint_name,
    load_served_instructcir,
)
from cir_encoder.phi import LoadedPhi, load_phi
from cir_encoder.preprocessing import check_aspect_ratio
from cir_encoder.settings import ENV_PREFIX, EncoderSettings

log = logging.getLogger(__name__)

# Raw CLIP image features have norms of about 1 to 100; far larger references overflow the mapping network
# and the text tower (NaN results), so they are refused with a clear message.
MAX_REFERENCE_NORM = 1e4

# Inputs arrive as readers, called when the core gets to them, so that its checks run in one order whatever
# the transport: a request over the item limit is refused before any file is read, and a prompt without a
# placeholder before its reference is looked at.
ReadEmbedding = Callable[[int, str], np.ndarray]
"""Given the dimension this model needs and the label to name in errors, a float32 vector."""


# --- what the core takes and returns --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelIdentity:
    """A model that produced an answer: CLIP, or one mapping network."""

    name: str
    revision: str  # checkpoint sha256
    family: str  # "open_clip", or the mapping network's architecture
    details: dict[str, str]  # e.g. device and precision; empty where there is nothing more to say


@dataclass(frozen=True)
class ImageEmbeddings:
    vectors: np.ndarray  # (n, embedding_dim) float32, normalised when asked
    model: ModelIdentity
    preprocessing: Preprocessing  # the one applied
    normalized: bool
    cache_hits: list[bool]
    timer: StageTimer


@dataclass(frozen=True)
class TextEmbeddings:
    vectors: np.ndarray  # (n, embedding_dim) float32
    model: ModelIdentity
    truncated: list[bool]
    token_counts: list[int]
    cache_hits: list[bool]
    normalized: bool
    timer: StageTimer


@dataclass(frozen=True)
class ComposedPrompt:
    text: str  # must hold PLACEHOLDER
    # Exactly one of the two: the reference image, or its raw CLIP embedding.
    reference_image: ImageReader | None = None
    reference_embedding: ReadEmbedding | None = None


@dataclass(frozen=True)
class ComposedEmbeddings:
    vectors: np.ndarray  # (n, embedding_dim) float32
    pseudo_tokens: np.ndarray  # (n, text_width) float32: Phi of each reference
    model: ModelIdentity
    mapping_network: ModelIdentity
    truncated: list[bool]
    token_counts: list[int]
    normalized: bool
    timer: StageTimer


@dataclass(frozen=True)
class InstructCirQuery:
    """A reference image and the instruction saying how to change it (method.md 4.2)."""

    text: str
    reference_image: ImageReader | None


@dataclass(frozen=True)
class InstructCirQueryEmbeddings:
    vectors: np.ndarray  # (n, embedding_dim) float32
    model: ModelIdentity  # the InstructCIR checkpoint
    normalized: bool
    fused: bool  # Eq. 3
    truncated: list[bool]
    timer: StageTimer


@dataclass(frozen=True)
class InstructCirTargetEmbeddings:
    vectors: np.ndarray  # (n, embedding_dim) float32
    model: ModelIdentity  # the InstructCIR checkpoint
    normalized: bool
    cache_hits: list[bool]
    timer: StageTimer


@dataclass(frozen=True)
class InstructCirInfo:
    model: ModelIdentity
    embedding_dim: int
    has_fusion: bool
    fusion_weight: float | None  # Eq. 3's weight of the query; None without fusion


@dataclass(frozen=True)
class MappingNetworkInfo:
    name: str
    model: ModelIdentity
    input_dim: int
    output_dim: int
    is_default: bool


@dataclass(frozen=True)
class ModelInfo:
    model: ModelIdentity
    embedding_dim: int
    text_width: int
    context_length: int
    placeholder_token_id: int
    default_preprocessing: Preprocessing
    target_pad_ratio: float
    image_size: int
    mapping_networks: list[MappingNetworkInfo]
    device: str
    dtype: str
    max_batch_items: int
    normalized_by_default: bool
    instructcir: InstructCirInfo | None = None  # set when an InstructCIR checkpoint is loaded


@dataclass(frozen=True)
class EncoderStats:
    # None until the model is loaded
    images: BatchStats | None
    texts: BatchStats | None
    composed: BatchStats | None
    decode_budget: DecodeBudgetStats
    # None also when no InstructCIR checkpoint is loaded
    instructcir_queries: BatchStats | None = None
    instructcir_targets: BatchStats | None = None


# --- the core -------------------------------------------------------------------------------------------


def build_engine(settings: EncoderSettings) -> EncoderEngine:
    """Loads CLIP, every configured mapping network and the InstructCIR checkpoint when one is set; a mapping
    network or checkpoint that does not fit the CLIP is refused (ConfigError)."""
    clip = load_clip(
        settings.clip_model,
        settings.clip_pretrained or None,
        settings.clip_config_dir or None,
        settings.device,
        settings.precision,
    )
    networks = {
        name: load_phi(path, clip.embed_dim, clip.text_width, device=clip.device)
        for name, path in sorted(settings.mapping_networks.items())
    }
    instructcir = None
    if settings.instructcir_checkpoint:
        instructcir = InstructCirModel(load_served_instructcir(settings.instructcir_checkpoint, clip), clip)
    return EncoderEngine(
        clip,
        networks,
        settings.default_mapping_network,
        settings.target_pad_ratio,
        max_aspect_ratio=settings.max_aspect_ratio,
        max_canvas_pixels=settings.max_image_pixels,
        instructcir=instructcir,
    )


def _normalized(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


def _phi_identity(name: str, phi: LoadedPhi, details: dict[str, str]) -> ModelIdentity:
    return ModelIdentity(name=name, revision=phi.sha256, family=phi.architecture, details=details)


def _instructcir_identity(model: InstructCirModel) -> ModelIdentity:
    return ModelIdentity(
        name=checkpoint_name(model),
        revision=model.loaded.sha256,
        family="instructcir",
        details=checkpoint_details(model),
    )


class Encoder:
    def __init__(self, settings: EncoderSettings, cache: Cache | None = None) -> None:
        # The settings checked themselves when built (EncoderSettings.validate).
        self.settings = settings
        self.cache = cache or cache_from_settings(settings)
        self.intake = ImageIntake(settings, ENV_PREFIX)
        self.decode_budget: DecodeBudget = self.intake.budget
        self._engine: EncoderEngine | None = None
        self._image_batcher: MicroBatcher[Preprocessing, Image.Image, np.ndarray] | None = None
        self._text_batcher: MicroBatcher[str, str, np.ndarray] | None = None
        self._composed_batcher: (
            MicroBatcher[str, tuple[str, np.ndarray], tuple[np.ndarray, np.ndarray]] | None
        ) = None
        # Keyed by (preprocessing, fused); made only when an InstructCIR checkpoint is loaded.
        self._instructcir_query_batcher: (
            MicroBatcher[tuple[Preprocessing, bool], tuple[Image.Image, str], np.ndarray] | None
        ) = None
        self._instructcir_target_batcher: MicroBatcher[Preprocessing, Image.Image, np.ndarray] | None = None

    def _batchers(self) -> list[MicroBatcher[Any, Any, Any] | None]:
        return [
            self._image_batcher,
            self._text_batcher,
            self._composed_batcher,
            self._instructcir_query_batcher,
            self._instructcir_target_batcher,
        ]

    async def close(self) -> None:
        for batcher in self._batchers():
            if batcher is not None:
                batcher.close()
        await self.cache.close()

    async def load(self) -> None:
        engine = await asyncio.to_thread(build_engine, self.settings)
        window_s = self.settings.batch_window_ms / 1000.0
        size = self.settings.batch_max_size

        def run_images(kind: Preprocessing, images: list[Image.Image]) -> list[np.ndarray]:
            return list(engine.embed_images(kind, images))

        def run_texts(_: str, texts: list[str]) -> list[np.ndarray]:
            return list(engine.embed_texts(engine.tokenize(texts).ids))

        def run_composed(
            network: str, items: list[tuple[str, np.ndarray]]
        ) -> list[tuple[np.ndarray, np.ndarray]]:
            _, phi = engine.resolve_mapping_network(network)
            tokens = engine.pseudo_tokens(phi, np.stack([embedding for _, embedding in items]))
            features = engine.embed_composed(engine.tokenize([text for text, _ in items]).ids, tokens)
            return list(zip(features, tokens, strict=True))

        pending = pending_items_limit(self.settings, size, self.settings.max_items_per_request)
        limit = f"{ENV_PREFIX}MAX_PENDING_BATCH_ITEMS"

        def batcher(run: Callable[[Any, list[Any]], Sequence[Any]], name: str) -> MicroBatcher[Any, Any, Any]:
            return MicroBatcher(
                run,
                max_batch_size=size,
                window_s=window_s,
                name=name,
                max_pending_items=pending,
                limit_setting=limit,
            )

        self._image_batcher = batcher(run_images, "images")
        self._text_batcher = batcher(run_texts, "texts")
        self._composed_batcher = batcher(run_composed, "composed")
        if engine.instructcir is not None:

            def run_instructcir_queries(
                key: tuple[Preprocessing, bool], items: list[tuple[Image.Image, str]]
            ) -> list[np.ndarray]:
                kind, fused = key
                images, texts = [image for image, _ in items], [text for _, text in items]
                return list(engine.embed_instructcir_queries(kind, images, texts, fused))

            def run_instructcir_targets(kind: Preprocessing, images: list[Image.Image]) -> list[np.ndarray]:
                return list(engine.embed_instructcir_targets(kind, images))

            self._instructcir_query_batcher = batcher(run_instructcir_queries, "instructcir_queries")
            self._instructcir_target_batcher = batcher(run_instructcir_targets, "instructcir_targets")
        self._engine = engine
        log.info(
            "loaded %s (dim %d) on %s/%s; mapping networks: %s; InstructCIR: %s",
            engine.identity,
            engine.clip.embed_dim,
            engine.clip.device,
            engine.clip.precision,
            ", ".join(engine.mapping_networks) or "none",
            engine.instructcir.identity if engine.instructcir is not None else "none",
        )

    @property
    def engine(self) -> EncoderEngine:
        if self._engine is None:
            raise Unavailable("the encoder model is not loaded yet")
        return self._engine

    def stats(self) -> EncoderStats:
        def of(batcher: MicroBatcher[Any, Any, Any] | None) -> BatchStats | None:
            return None if batcher is None else batcher.stats

        return EncoderStats(
            images=of(self._image_batcher),
            texts=of(self._text_batcher),
            composed=of(self._composed_batcher),
            decode_budget=self.decode_budget.stats,
            instructcir_queries=of(self._instructcir_query_batcher),
            instructcir_targets=of(self._instructcir_target_batcher),
        )

    def _model_identity(self) -> ModelIdentity:
        clip = self.engine.clip
        return ModelIdentity(
            name=clip.model_name,
            revision=clip.checkpoint_sha256,
            family="open_clip",
            details={"device": clip.device, "precision": clip.precision},
        )

    def _preprocessing(self, value: str | None) -> Preprocessing:
        """The preprocessing to apply: `value`, or the server's default when None."""
        if value is None:
            return self.settings.preprocessing
        try:
            return Preprocessing(value)
        except ValueError:
            raise InvalidArgument(f"unknown preprocessing value {value}") from None

    def _require_items(self, items: Sequence[Any], field: str) -> None:
        require_items(items, field, self.settings.max_items_per_request, f"{ENV_PREFIX}MAX_ITEMS_PER_REQUEST")

    def _check_texts(self, texts: Sequence[str], field: str) -> None:
        self._require_items(texts, field)
        limit = self.settings.max_text_chars
        for index, text in enumerate(texts):
            if len(text) > limit:
                raise InvalidArgument(
                    f"{field}[{index}] has {len(text)} characters, over the limit of {limit} "
                    f"({ENV_PREFIX}MAX_TEXT_CHARS)"
                )

    def _check_aspect_ratios(self, decoded: Sequence[DecodedImage], field: str) -> None:
        # Checked per request before batching: one caller's image never fails a batch shared with others.
        for index, image in enumerate(decoded):
            check_aspect_ratio(
                (image.width, image.height),
                self.settings.max_aspect_ratio,
                f"{field}[{index}]",
                f"{ENV_PREFIX}MAX_ASPECT_RATIO",
            )

    async def _cached_image_vectors(
        self,
        images: Sequence[ImageReader],
        kind: Preprocessing,
        bypass: bool,
        timer: StageTimer,
        field: str,
        *,
        batcher: MicroBatcher[Preprocessing, Image.Image, np.ndarray],
        cache_kind: str,
        identity: str,
        dim: int,
    ) -> tuple[np.ndarray, list[bool]]:
        """A vector per image from `batcher`, cached by image content, model `identity` and preprocessing."""
        # The decoded pixels count against the process's budget until the model has run on them.
        async with self.intake.decoded(images, field, timer) as decoded:
            self._check_aspect_ratios(decoded, field)
            params = {"preprocessing": kind, "target_pad_ratio": self.engine.target_pad_ratio}
            keys = [cache_key(cache_kind, identity, params, d.content_sha256) for d in decoded]

            async def compute(indices: list[int]) -> list[bytes]:
                with timer.stage(f"embed_{batcher.name}"):
                    vectors = await batcher.submit(kind, [decoded[i].image for i in indices])
                return [pack_f32(v) for v in vectors]

            memo = await get_or_compute(self.cache, keys, compute, bypass=bypass)
        matrix = np.stack([unpack_f32(v, dim) for v in memo.values])
        return matrix, memo.hits

    async def _raw_image_embeddings(
        self, images: Sequence[ImageReader], kind: Preprocessing, bypass: bool, timer: StageTimer, field: str
    ) -> tuple[np.ndarray, list[bool]]:
        assert self._image_batcher is not None
        return await self._cached_image_vectors(
            images,
            kind,
            bypass,
            timer,
            field,
            batcher=self._image_batcher,
            cache_kind="clip_image",
            identity=self.engine.identity,
            dim=self.engine.clip.embed_dim,
        )

    async def embed_images(
        self, images: Sequence[ImageReader], preprocessing: str | None, *, normalize: bool, bypass_cache: bool
    ) -> ImageEmbeddings:
        """CLIP image embeddings; `preprocessing` None is the server's default."""
        self._require_items(images, "images")
        kind = self._preprocessing(preprocessing)
        timer = StageTimer()
        matrix, hits = await self._raw_image_embeddings(images, kind, bypass_cache, timer, "images")
        if normalize:
            matrix = _normalized(matrix)
        return ImageEmbeddings(
            vectors=matrix,
            model=self._model_identity(),
            preprocessing=kind,
            normalized=normalize,
            cache_hits=hits,
            timer=timer,
        )

    async def embed_texts(
        self, texts: Sequence[str], *, normalize: bool, bypass_cache: bool
    ) -> TextEmbeddings:
        texts = list(texts)
        self._check_texts(texts, "texts")
        timer = StageTimer()
        engine = self.engine
        tokenized = engine.tokenize(texts)
        keys = [cache_key("clip_text", engine.identity, {}, content_hash(t.encode("utf-8"))) for t in texts]
        assert self._text_batcher is not None

        async def compute(indices: list[int]) -> list[bytes]:
            with timer.stage("embed_texts"):
                vectors = await self._text_batcher.submit("text", [texts[i] for i in indices])
            return [pack_f32(v) for v in vectors]

        memo = await get_or_compute(self.cache, keys, compute, bypass=bypass_cache)
        matrix = np.stack([unpack_f32(v, engine.clip.embed_dim) for v in memo.values])
        if normalize:
            matrix = _normalized(matrix)
        return TextEmbeddings(
            vectors=matrix,
            model=self._model_identity(),
            truncated=tokenized.truncated,
            token_counts=tokenized.token_counts,
            cache_hits=memo.hits,
            normalized=normalize,
            timer=timer,
        )

    async def embed_composed_prompts(
        self,
        prompts: Sequence[ComposedPrompt],
        mapping_network: str,
        preprocessing: str | None,
        *,
        normalize: bool,
    ) -> ComposedEmbeddings:
        """Composed-prompt embeddings: each prompt's placeholder replaced by Phi of its reference.

        `mapping_network` "" is the default one; `preprocessing` None is the server's default (it applies to
        reference images only).
        """
        prompts = list(prompts)
        self._check_texts([p.text for p in prompts], "prompts")
        for index, prompt in enumerate(prompts):
            if PLACEHOLDER not in prompt.text:
                raise InvalidArgument(
                    f"prompts[{index}].text has no placeholder {PLACEHOLDER!r}: a composed prompt needs "
                    'at least one, e.g. "a photo of $ that is red"'
                )
            if prompt.reference_image is None and prompt.reference_embedding is None:
                raise InvalidArgument(f"prompts[{index}] has neither reference_image nor reference_embedding")
        engine = self.engine
        name, phi = engine.resolve_mapping_network(mapping_network)
        tokenized = engine.tokenize([p.text for p in prompts])
        # A "$" the tokenizer does not keep as the placeholder word (cut off past the context, or fused with
        # other characters) injects nothing: the prompt would silently ignore the reference.
        has_placeholder = (tokenized.ids == engine.placeholder_token_id).any(dim=1)
        for index in (~has_placeholder).nonzero().flatten().tolist():
            where = (
                f"past the first {engine.clip.context_length} tokens, where the text is cut off"
                if tokenized.truncated[index]
                else 'joined to the characters beside it (e.g. "$,")'
            )
            raise InvalidArgument(
                f"prompts[{index}].text has {PLACEHOLDER!r} but no placeholder token: it is {where}; write "
                'it as a separate word near the start (e.g. "a photo of $ that is red")'
            )
        timer = StageTimer()
        raw = await self._reference_embeddings(prompts, self._preprocessing(preprocessing), timer)
        assert self._composed_batcher is not None
        with timer.stage("embed_composed"):
            pairs = await self._composed_batcher.submit(
                name, [(p.text, r) for p, r in zip(prompts, raw, strict=True)]
            )
        matrix = np.stack([feature for feature, _ in pairs])
        tokens = np.stack([token for _, token in pairs])
        finite = np.isfinite(matrix).all(axis=1) & np.isfinite(tokens).all(axis=1)
        for index in (~finite).nonzero()[0].tolist():
            raise InvalidArgument(
                f"prompts[{index}]: the composed embedding is not finite (NaN or infinite): its reference "
                f"overflows this model's {self.engine.clip.precision} arithmetic; send the "
                "reference_embedding as EmbedImages returns it (raw CLIP features, of norm near 1 to 100)"
            )
        if normalize:
            matrix = _normalized(matrix)
        return ComposedEmbeddings(
            vectors=matrix,
            pseudo_tokens=tokens,
            model=self._model_identity(),
            mapping_network=_phi_identity(name, phi, {"path": str(phi.path)}),
            truncated=tokenized.truncated,
            token_counts=tokenized.token_counts,
            normalized=normalize,
            timer=timer,
        )

    async def _reference_embeddings(
        self, prompts: Sequence[ComposedPrompt], kind: Preprocessing, timer: StageTimer
    ) -> np.ndarray:
        dim = self.engine.clip.embed_dim
        rows: list[np.ndarray | None] = [None] * len(prompts)
        image_indices = []
        for index, prompt in enumerate(prompts):
            if prompt.reference_embedding is not None:
                row = prompt.reference_embedding(dim, f"prompts[{index}].reference_embedding")
                norm = float(np.linalg.norm(row.astype(np.float64)))
                if not norm <= MAX_REFERENCE_NORM:
                    raise InvalidArgument(
                        f"prompts[{index}].reference_embedding has norm {norm:.3g}, over the limit of "
                        f"{MAX_REFERENCE_NORM:g}: send the image embedding as EmbedImages returns it (raw "
                        "CLIP features, of norm near 1 to 100), not a scaled one"
                    )
                rows[index] = row
            else:
                image_indices.append(index)
        if image_indices:
            images = [prompts[i].reference_image for i in image_indices]
            matrix, _ = await self._raw_image_embeddings(
                images,  # type: ignore[arg-type]  # every prompt without an embedding has an image (checked)
                kind,
                False,
                timer,
                "prompts.reference_image",
            )
            for row, index in zip(matrix, image_indices, strict=True):
                rows[index] = row
        return np.stack(rows).astype(np.float32)  # type: ignore[arg-type]

    # --- InstructCIR (method.md 4.2) ---------------------------------------------------------------------

    async def embed_instructcir_queries(
        self,
        queries: Sequence[InstructCirQuery],
        preprocessing: str | None,
        *,
        fused: bool,
        normalize: bool,
    ) -> InstructCirQueryEmbeddings:
        """InstructCIR query embeddings of (reference image, instruction) pairs; `fused` is Eq. 3.

        FAILED_PRECONDITION without a checkpoint; `fused` on a checkpoint without a fusion weight is
        INVALID_ARGUMENT. Eq. 3's vectors are unit-norm whatever `normalize` says (and say so).
        """
        model = self.engine.require_instructcir()
        queries = list(queries)
        texts = [query.text for query in queries]
        self._check_texts(texts, "queries")
        if fused and not model.has_fusion:
            raise InvalidArgument(
                f"fused is set, but the InstructCIR checkpoint {checkpoint_name(model)} has no fusion weight "
                "(Eq. 3; trained without it): send fused=false, or load a checkpoint fine-tuned with fusion"
            )
        for index, query in enumerate(queries):
            if not query.text.strip():
                raise InvalidArgument(
                    f"queries[{index}].text is empty: an InstructCIR query needs the instruction saying how "
                    "to change the reference (for the image alone use EmbedInstructCirTargets)"
                )
            if query.reference_image is None:
                raise InvalidArgument(f"queries[{index}] has no reference_image")
        kind = self._preprocessing(preprocessing)
        truncated = self.engine.tokenize(texts).truncated
        timer = StageTimer()
        readers = [query.reference_image for query in queries if query.reference_image is not None]
        assert self._instructcir_query_batcher is not None
        async with self.intake.decoded(readers, "queries.reference_image", timer) as decoded:
            self._check_aspect_ratios(decoded, "queries.reference_image")
            with timer.stage("embed_instructcir_queries"):
                vectors = await self._instructcir_query_batcher.submit(
                    (kind, fused), [(d.image, text) for d, text in zip(decoded, texts, strict=True)]
                )
        matrix = np.stack(vectors)
        if normalize:
            matrix = _normalized(matrix)
        return InstructCirQueryEmbeddings(
            vectors=matrix,
            model=_instructcir_identity(model),
            normalized=normalize or fused,
            fused=fused,
            truncated=truncated,
            timer=timer,
        )

    async def embed_instructcir_targets(
        self, images: Sequence[ImageReader], preprocessing: str | None, *, normalize: bool, bypass_cache: bool
    ) -> InstructCirTargetEmbeddings:
        """InstructCIR target embeddings (the EMA tower, null text), cached by image and checkpoint."""
        model = self.engine.require_instructcir()
        self._require_items(images, "images")
        kind = self._preprocessing(preprocessing)
        timer = StageTimer()
        assert self._instructcir_target_batcher is not None
        matrix, hits = await self._cached_image_vectors(
            images,
            kind,
            bypass_cache,
            timer,
            "images",
            batcher=self._instructcir_target_batcher,
            cache_kind="instructcir_target",
            identity=model.identity,
            dim=model.network.embed_dim,
        )
        if normalize:
            matrix = _normalized(matrix)
        return InstructCirTargetEmbeddings(
            vectors=matrix,
            model=_instructcir_identity(model),
            normalized=normalize,
            cache_hits=hits,
            timer=timer,
        )

    def _instructcir_info(self) -> InstructCirInfo | None:
        model = self.engine.instructcir
        if model is None:
            return None
        return InstructCirInfo(
            model=_instructcir_identity(model),
            embedding_dim=model.network.embed_dim,
            has_fusion=model.has_fusion,
            fusion_weight=model.network.fusion_weight,
        )

    def model_info(self) -> ModelInfo:
        engine = self.engine
        clip = engine.clip
        return ModelInfo(
            model=self._model_identity(),
            embedding_dim=clip.embed_dim,
            text_width=clip.text_width,
            context_length=clip.context_length,
            placeholder_token_id=engine.placeholder_token_id,
            default_preprocessing=self.settings.preprocessing,
            target_pad_ratio=engine.target_pad_ratio,
            image_size=clip.image_size[0],
            mapping_networks=[
                MappingNetworkInfo(
                    name=name,
                    model=_phi_identity(name, phi, {}),
                    input_dim=phi.input_dim,
                    output_dim=phi.token_dim,
                    is_default=name == engine.default_mapping_network,
                )
                for name, phi in engine.mapping_networks.items()
            ],
            device=clip.device,
            dtype=clip.precision,
            max_batch_items=self.settings.max_items_per_request,
            normalized_by_default=False,
            instructcir=self._instructcir_info(),
        )
