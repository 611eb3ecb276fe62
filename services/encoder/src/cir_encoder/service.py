"""EncoderService: request validation, caching and batching around the EncoderEngine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2, encoder_pb2_grpc
from cir_common.batching import MicroBatcher
from cir_common.cache import Cache, cache_from_settings, cache_key
from cir_common.errors import ConfigError, InvalidArgument, Unavailable
from cir_common.images import content_hash
from cir_common.memo import get_or_compute
from cir_common.service_kit import (
    StageTimer,
    decode_budget,
    decoded_request_images,
    pending_items_limit,
    require_items,
)
from cir_common.vectors import pack_f32, unpack_f32, vector_from_proto, vector_to_proto
from cir_encoder.clip_loading import load_clip
from cir_encoder.engine import PLACEHOLDER, EncoderEngine
from cir_encoder.phi import load_phi
from cir_encoder.preprocessing import MODEL_DEFAULT, PREPROCESSING_CHOICES, TARGETPAD, check_aspect_ratio
from cir_encoder.settings import ENV_PREFIX, EncoderSettings

log = logging.getLogger(__name__)

_PREPROCESSING_FROM_PROTO = {
    encoder_pb2.PREPROCESSING_TARGETPAD: TARGETPAD,
    encoder_pb2.PREPROCESSING_MODEL_DEFAULT: MODEL_DEFAULT,
}
_PREPROCESSING_TO_PROTO = {name: value for value, name in _PREPROCESSING_FROM_PROTO.items()}


def build_engine(settings: EncoderSettings) -> EncoderEngine:
    """Loads CLIP and every configured mapping network; a mapping network that does not fit is refused."""
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
    return EncoderEngine(
        clip,
        networks,
        settings.default_mapping_network,
        settings.target_pad_ratio,
        max_aspect_ratio=settings.max_aspect_ratio,
        max_canvas_pixels=settings.max_image_pixels,
    )


# Raw CLIP image features have norms of about 1 to 100; far larger references overflow the mapping network
# and the text tower (NaN results), so they are refused with a clear message.
MAX_REFERENCE_NORM = 1e4


def _normalized(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    return matrix / np.maximum(norms, 1e-12)


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self, settings: EncoderSettings, cache: Cache | None = None) -> None:
        if settings.preprocessing not in PREPROCESSING_CHOICES:
            raise ConfigError(
                f"{ENV_PREFIX}PREPROCESSING={settings.preprocessing!r}; "
                f"choose {', '.join(PREPROCESSING_CHOICES)}"
            )
        self.settings = settings
        self.cache = cache or cache_from_settings(settings)
        self.decode_budget = decode_budget(settings, ENV_PREFIX)
        self._engine: EncoderEngine | None = None
        self._image_batcher: MicroBatcher[str, Image.Image, np.ndarray] | None = None
        self._text_batcher: MicroBatcher[str, str, np.ndarray] | None = None
        self._composed_batcher: (
            MicroBatcher[str, tuple[str, np.ndarray], tuple[np.ndarray, np.ndarray]] | None
        ) = None

    async def close(self) -> None:
        for batcher in (self._image_batcher, self._text_batcher, self._composed_batcher):
            if batcher is not None:
                batcher.close()
        await self.cache.close()

    async def load(self) -> None:
        engine = await asyncio.to_thread(build_engine, self.settings)
        window_s = self.settings.batch_window_ms / 1000.0
        size = self.settings.batch_max_size

        def run_images(kind: str, images: list[Image.Image]) -> list[np.ndarray]:
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
        self._engine = engine
        log.info(
            "loaded %s (dim %d) on %s/%s; mapping networks: %s",
            engine.identity,
            engine.clip.embed_dim,
            engine.clip.device,
            engine.clip.precision,
            ", ".join(engine.mapping_networks) or "none",
        )

    @property
    def engine(self) -> EncoderEngine:
        if self._engine is None:
            raise Unavailable("the encoder model is not loaded yet")
        return self._engine

    def _model_identity(self) -> common_pb2.ModelIdentity:
        clip = self.engine.clip
        return common_pb2.ModelIdentity(
            name=clip.model_name,
            revision=clip.checkpoint_sha256,
            family="open_clip",
            details={"device": clip.device, "precision": clip.precision},
        )

    def _preprocessing(self, value: int) -> str:
        if value == encoder_pb2.PREPROCESSING_UNSPECIFIED:
            return self.settings.preprocessing
        if value not in _PREPROCESSING_FROM_PROTO:
            raise InvalidArgument(f"unknown preprocessing value {value}")
        return _PREPROCESSING_FROM_PROTO[value]

    async def _raw_image_embeddings(
        self, images: Sequence[common_pb2.Image], kind: str, bypass: bool, timer: StageTimer, field: str
    ) -> tuple[np.ndarray, list[bool]]:
        # The decoded pixels count against the process's budget until the model has run on them.
        async with decoded_request_images(images, self.settings, self.decode_budget, field, timer) as decoded:
            # Checked per request before batching: one caller's image never fails a batch shared with others.
            for index, image in enumerate(decoded):
                check_aspect_ratio(
                    (image.width, image.height),
                    self.settings.max_aspect_ratio,
                    f"{field}[{index}]",
                    f"{ENV_PREFIX}MAX_ASPECT_RATIO",
                )
            params = {"preprocessing": kind, "target_pad_ratio": self.engine.target_pad_ratio}
            keys = [cache_key("clip_image", self.engine.identity, params, d.content_sha256) for d in decoded]
            assert self._image_batcher is not None

            async def compute(indices: list[int]) -> list[bytes]:
                with timer.stage("embed_images"):
                    vectors = await self._image_batcher.submit(kind, [decoded[i].image for i in indices])
                return [pack_f32(v) for v in vectors]

            memo = await get_or_compute(self.cache, keys, compute, bypass=bypass)
        matrix = np.stack([unpack_f32(v, self.engine.clip.embed_dim) for v in memo.values])
        return matrix, memo.hits

    def _check_texts(self, texts: Sequence[str], field: str) -> None:
        require_items(texts, field, self.settings.max_items_per_request, f"{ENV_PREFIX}MAX_ITEMS_PER_REQUEST")
        limit = self.settings.max_text_chars
        for index, text in enumerate(texts):
            if len(text) > limit:
                raise InvalidArgument(
                    f"{field}[{index}] has {len(text)} characters, over the limit of {limit} "
                    f"({ENV_PREFIX}MAX_TEXT_CHARS)"
                )

    async def EmbedImages(
        self, request: encoder_pb2.EmbedImagesRequest, context: object
    ) -> encoder_pb2.EmbedImagesResponse:
        require_items(
            request.images,
            "images",
            self.settings.max_items_per_request,
            f"{ENV_PREFIX}MAX_ITEMS_PER_REQUEST",
        )
        kind = self._preprocessing(request.preprocessing)
        timer = StageTimer()
        matrix, hits = await self._raw_image_embeddings(
            request.images, kind, request.bypass_cache, timer, "images"
        )
        if request.normalize:
            matrix = _normalized(matrix)
        return encoder_pb2.EmbedImagesResponse(
            embeddings=[vector_to_proto(v, request.vector_format) for v in matrix],
            model=self._model_identity(),
            preprocessing=_PREPROCESSING_TO_PROTO[kind],
            normalized=request.normalize,
            cache_hits=hits,
            timings=timer.as_protos(),
        )

    async def EmbedTexts(
        self, request: encoder_pb2.EmbedTextsRequest, context: object
    ) -> encoder_pb2.EmbedTextsResponse:
        texts = list(request.texts)
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

        memo = await get_or_compute(self.cache, keys, compute, bypass=request.bypass_cache)
        matrix = np.stack([unpack_f32(v, engine.clip.embed_dim) for v in memo.values])
        if request.normalize:
            matrix = _normalized(matrix)
        return encoder_pb2.EmbedTextsResponse(
            embeddings=[
                encoder_pb2.TextEmbedding(
                    embedding=vector_to_proto(vector, request.vector_format),
                    truncated=truncated,
                    token_count=count,
                    cache_hit=hit,
                )
                for vector, truncated, count, hit in zip(
                    matrix, tokenized.truncated, tokenized.token_counts, memo.hits, strict=True
                )
            ],
            model=self._model_identity(),
            normalized=request.normalize,
            timings=timer.as_protos(),
        )

    async def EmbedComposedPrompts(
        self, request: encoder_pb2.EmbedComposedPromptsRequest, context: object
    ) -> encoder_pb2.EmbedComposedPromptsResponse:
        prompts = list(request.prompts)
        self._check_texts([p.text for p in prompts], "prompts")
        for index, prompt in enumerate(prompts):
            if PLACEHOLDER not in prompt.text:
                raise InvalidArgument(
                    f"prompts[{index}].text has no placeholder {PLACEHOLDER!r}: a composed prompt needs "
                    'at least one, e.g. "a photo of $ that is red"'
                )
            if prompt.WhichOneof("reference") is None:
                raise InvalidArgument(f"prompts[{index}] has neither reference_image nor reference_embedding")
        engine = self.engine
        name, phi = engine.resolve_mapping_network(request.mapping_network)
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
        raw = await self._reference_embeddings(prompts, self._preprocessing(request.preprocessing), timer)
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
        if request.normalize:
            matrix = _normalized(matrix)
        fmt = request.vector_format
        return encoder_pb2.EmbedComposedPromptsResponse(
            embeddings=[
                encoder_pb2.TextEmbedding(embedding=vector_to_proto(v, fmt), truncated=t, token_count=c)
                for v, t, c in zip(matrix, tokenized.truncated, tokenized.token_counts, strict=True)
            ],
            pseudo_tokens=[vector_to_proto(t, fmt) for t in tokens] if request.return_pseudo_tokens else [],
            model=self._model_identity(),
            mapping_network=common_pb2.ModelIdentity(
                name=name, revision=phi.sha256, family=phi.architecture, details={"path": str(phi.path)}
            ),
            normalized=request.normalize,
            timings=timer.as_protos(),
        )

    async def _reference_embeddings(
        self, prompts: Sequence[encoder_pb2.ComposedPrompt], kind: str, timer: StageTimer
    ) -> np.ndarray:
        dim = self.engine.clip.embed_dim
        rows: list[np.ndarray | None] = [None] * len(prompts)
        image_indices = []
        for index, prompt in enumerate(prompts):
            if prompt.WhichOneof("reference") == "reference_embedding":
                row = vector_from_proto(
                    prompt.reference_embedding,
                    expected_dim=dim,
                    label=f"prompts[{index}].reference_embedding",
                )
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
                images, kind, False, timer, "prompts.reference_image"
            )
            for row, index in zip(matrix, image_indices, strict=True):
                rows[index] = row
        return np.stack(rows).astype(np.float32)  # type: ignore[arg-type]

    async def GetModelInfo(
        self, request: encoder_pb2.GetModelInfoRequest, context: object
    ) -> encoder_pb2.GetModelInfoResponse:
        engine = self.engine
        clip = engine.clip
        return encoder_pb2.GetModelInfoResponse(
            model=self._model_identity(),
            embedding_dim=clip.embed_dim,
            text_width=clip.text_width,
            context_length=clip.context_length,
            placeholder_token_id=engine.placeholder_token_id,
            default_preprocessing=_PREPROCESSING_TO_PROTO[self.settings.preprocessing],
            target_pad_ratio=engine.target_pad_ratio,
            image_size=clip.image_size[0],
            mapping_networks=[
                encoder_pb2.MappingNetworkInfo(
                    name=name,
                    model=common_pb2.ModelIdentity(name=name, revision=phi.sha256, family=phi.architecture),
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
        )
