"""The captioner's core: validated decoding, batching across requests and caching around the CaptionEngine.

`Captioner` is what the gRPC layer (`service.py`) calls after converting a request. It knows no protos: it
takes the images as readers (`cir_common.service_kit.ImageReader`), the decoding as `DecodingOverrides`
(variant as `cir_common.vocabulary.DecodingVariant`) and plain numbers, returns dataclasses, and raises
`cir_common.errors` types, which the server maps to status codes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from cir_captioner.blip2_loading import load_blip2
from cir_captioner.decoding import DecodingOverrides, DecodingParams, resolve_decoding
from cir_captioner.engine import CaptionEngine
from cir_captioner.settings import ENV_PREFIX, CaptionerSettings
from cir_common.batching import BatchStats, MicroBatcher
from cir_common.cache import Cache, cache_from_settings, cache_key, pack_json, unpack_json
from cir_common.errors import ConfigError, InvalidArgument, Unavailable
from cir_common.images import DecodeBudgetStats
from cir_common.memo import get_or_compute
from cir_common.service_kit import ImageIntake, ImageReader, StageTimer, pending_items_limit, require_items

log = logging.getLogger(__name__)

CACHE_KIND = "blip2_captions"


def build_engine(settings: CaptionerSettings) -> CaptionEngine:
    return CaptionEngine(load_blip2(settings.model, settings.device, settings.dtype))


# --- what the core takes and returns --------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    name: str
    revision: str  # weights hash where known, else the identity's revision
    family: str
    device: str
    dtype: str
    image_size: tuple[int, int]  # (height, width) the processor resizes to


@dataclass(frozen=True)
class ImageCaptions:
    captions: list[str]
    cache_hit: bool


@dataclass(frozen=True)
class CaptionsResult:
    results: list[ImageCaptions]  # one per image, in request order
    decoding: DecodingParams  # every parameter as it ran, `num_captions` included
    model: ModelInfo
    timings: StageTimer


@dataclass(frozen=True)
class CaptionerInfo:
    model: ModelInfo
    default_decoding: DecodingParams
    max_images_per_request: int
    max_num_captions: int
    max_new_tokens: int


@dataclass(frozen=True)
class CaptionerStats:
    batching: BatchStats | None  # None until the model is loaded
    decode_budget: DecodeBudgetStats


# --- the core -------------------------------------------------------------------------------------------


class Captioner:
    def __init__(self, settings: CaptionerSettings, cache: Cache | None = None) -> None:
        # The settings checked themselves when built (CaptionerSettings.validate), the default decoding too.
        self.defaults = settings.decoding_defaults()
        self.limits = settings.decoding_limits()
        self.default_params = resolve_decoding(DecodingOverrides(), 0, self.defaults, self.limits)
        self.settings = settings
        self.cache = cache or cache_from_settings(settings)
        self.intake = ImageIntake(settings, ENV_PREFIX)
        self.decode_budget = self.intake.budget
        self._engine: CaptionEngine | None = None
        self._batcher: MicroBatcher[DecodingParams, Image.Image, list[str]] | None = None

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
        await self.cache.close()

    async def load(self) -> None:
        engine = await asyncio.to_thread(build_engine, self.settings)
        try:
            engine.check_fits_context(self.default_params)
        except InvalidArgument as error:
            raise ConfigError(
                f"the default decoding does not fit {self.settings.model}: {error.message}"
            ) from None
        self._batcher = MicroBatcher(
            engine.caption,
            max_batch_size=self.settings.batch_max_images,
            window_s=self.settings.batch_window_ms / 1000.0,
            name="captions",
            max_pending_items=pending_items_limit(
                self.settings, self.settings.batch_max_images, self.settings.max_images_per_request
            ),
            limit_setting=f"{ENV_PREFIX}MAX_PENDING_BATCH_ITEMS",
        )
        self._engine = engine
        log.info(
            "loaded %s on %s/%s (image size %s); default %s, N=%d, prompt %r",
            engine.identity,
            engine.blip2.device,
            engine.dtype_name,
            engine.blip2.image_size,
            self.defaults.variant.value,
            self.defaults.num_captions,
            self.defaults.prompt,
        )

    @property
    def engine(self) -> CaptionEngine:
        if self._engine is None:
            raise Unavailable("the captioner model is not loaded yet")
        return self._engine

    def model_info(self) -> ModelInfo:
        engine = self.engine
        return ModelInfo(
            name=engine.name,
            revision=engine.revision,
            family="blip2",
            device=engine.blip2.device,
            dtype=engine.dtype_name,
            image_size=engine.blip2.image_size,
        )

    def info(self) -> CaptionerInfo:
        return CaptionerInfo(
            model=self.model_info(),
            default_decoding=self.default_params,
            max_images_per_request=self.settings.max_images_per_request,
            max_num_captions=self.limits.max_num_captions,
            max_new_tokens=self.limits.max_new_tokens,
        )

    def stats(self) -> CaptionerStats:
        return CaptionerStats(
            batching=None if self._batcher is None else self._batcher.stats,
            decode_budget=self.decode_budget.stats,
        )

    def _cache_params(self, params: DecodingParams) -> dict[str, object]:
        # The weights hash does not cover the processor config or the numeric precision; both change captions.
        engine = self.engine
        return {
            **params.cache_params(),
            "image_size": list(engine.blip2.image_size),
            "dtype": engine.dtype_name,
        }

    async def generate_captions(
        self,
        images: Sequence[ImageReader],
        num_captions: int,
        decoding: DecodingOverrides,
        *,
        bypass_cache: bool = False,
    ) -> CaptionsResult:
        """`num_captions` captions per image (0: the server's default) with `decoding` over the defaults.

        `bypass_cache` neither reads nor writes the cache.
        """
        require_items(
            images, "images", self.settings.max_images_per_request, f"{ENV_PREFIX}MAX_IMAGES_PER_REQUEST"
        )
        params = resolve_decoding(decoding, num_captions, self.defaults, self.limits)
        engine = self.engine
        timer = StageTimer()
        # The decoded pixels count against the process's budget until the model has run on them.
        async with self.intake.decoded(images, timer=timer) as decoded:
            cache_params = self._cache_params(params)
            keys = [cache_key(CACHE_KIND, engine.identity, cache_params, d.content_sha256) for d in decoded]
            assert self._batcher is not None
            batcher = self._batcher

            async def compute(indices: list[int]) -> list[bytes]:
                with timer.stage("generate"):
                    captions = await batcher.submit(params, [decoded[i].image for i in indices])
                return [pack_json(c) for c in captions]

            # Unseeded requests are cached too: the first sample is pinned, so a gallery's captions stay put.
            memo = await get_or_compute(self.cache, keys, compute, bypass=bypass_cache)
        return CaptionsResult(
            results=[
                ImageCaptions(captions=unpack_json(value), cache_hit=hit)
                for value, hit in zip(memo.values, memo.hits, strict=True)
            ],
            decoding=params,
            model=self.model_info(),
            timings=timer,
        )
