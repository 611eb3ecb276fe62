"""Pieces every service's servicer uses: request limits, image intake, stage timings, the process entry."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from cir.common.v1 import common_pb2
from cir_common import operations
from cir_common.admission import to_thread_to_completion
from cir_common.config import ServiceSettings
from cir_common.errors import ConfigError, InvalidArgument, ResourceExhausted
from cir_common.images import (
    DecodeBudget,
    DecodedImage,
    ImageLimits,
    decode_image,
    probe_image,
    resolve_image_source,
)
from cir_common.server import Authorizer, ServiceHost
from cir_common.telemetry import TELEMETRY


def require_items(items: Sequence[Any], field: str, limit: int, setting: str) -> None:
    """An empty list is INVALID_ARGUMENT; one over `limit` is RESOURCE_EXHAUSTED naming the setting."""
    if not items:
        raise InvalidArgument(f"{field} is empty: send at least one item")
    if len(items) > limit:
        raise ResourceExhausted(
            f"{field} has {len(items)} items, over the limit of {limit} per request ({setting}); "
            "split the request"
        )


def image_limits(settings: ServiceSettings) -> ImageLimits:
    return ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)


def decode_budget(settings: ServiceSettings, env_prefix: str) -> DecodeBudget:
    """The process's budget of decoded image bytes, from its settings (errors name `env_prefix` variables)."""
    return DecodeBudget(
        settings.max_decoded_image_bytes,
        max_wait_s=settings.max_decoded_image_wait_s,
        setting=f"{env_prefix}MAX_DECODED_IMAGE_BYTES",
        wait_setting=f"{env_prefix}MAX_DECODED_IMAGE_WAIT_S",
    )


ImageReader = Callable[[str], bytes]
"""Given the label to name in errors, one image's encoded bytes; may do blocking file I/O."""


def image_reader(image: common_pb2.Image, settings: ServiceSettings) -> ImageReader:
    """A `cir.common.v1.Image` as an ImageReader: its bytes, or the file its URI names (under the settings'
    image_uri_roots, at most max_image_bytes)."""
    roots = [Path(root) for root in settings.image_uri_roots]
    return lambda label: resolve_image_source(image, roots, max_bytes=settings.max_image_bytes, label=label)


class ImageIntake:
    """How a service takes in a request's images: its image limits, and the process's budget of decoded bytes.

    Knows no protos: images come as ImageReaders (`image_reader` makes them from `cir.common.v1.Image`).
    """

    def __init__(self, settings: ServiceSettings, env_prefix: str) -> None:
        self.limits = image_limits(settings)
        self.budget = decode_budget(settings, env_prefix)

    @asynccontextmanager
    async def decoded(
        self, images: Sequence[ImageReader], field: str = "images", timer: StageTimer | None = None
    ) -> AsyncIterator[list[DecodedImage]]:
        """A request's images read, probed and decoded off the event loop within the decode budget.

        Each image is read and its header probed before the next is read, so the first bad image is the one
        reported (`field[index]` names it). The request's estimated decoded size is then reserved at once
        (waiting for room, see DecodeBudget), the images decoded, and the reservation held until the block
        ends: run the model on the images inside the block, and let them go with it. With `timer`, the stage
        "decode" is recorded (reading, probing, any wait for room, and decoding).
        """
        limits = self.limits
        labels = [f"{field}[{index}]" for index in range(len(images))]

        def read_and_probe() -> tuple[list[bytes], int]:
            sources: list[bytes] = []
            total = 0
            for read, label in zip(images, labels, strict=True):
                sources.append(read(label))
                total += probe_image(sources[-1], limits, label=label).decoded_bytes
            return sources, total

        def decode_all(sources: list[bytes]) -> list[DecodedImage]:
            pairs = zip(sources, labels, strict=True)
            return [decode_image(data, limits, label=label) for data, label in pairs]

        started = time.perf_counter()
        sources, total = await asyncio.to_thread(read_and_probe)
        what = labels[0] if len(labels) == 1 else f"the {len(labels)} images of {field}"
        async with self.budget.reserve(total, label=what):
            # A caller that gives up mid-decode keeps the reservation until the thread is done with them.
            decoded = await to_thread_to_completion(decode_all, sources)
            if timer is not None:
                timer.record("decode", (time.perf_counter() - started) * 1000.0)
            yield decoded


def pending_items_limit(settings: ServiceSettings, batch_size: int, max_items_per_request: int) -> int:
    """`max_pending_batch_items`, or when 0 eight batches' worth, and never less than one whole request.

    Items past a few batches only wait longer (the model runs one batch at a time), and a caller deep in the
    queue would more likely run out of time than be served; refusing early lets it retry elsewhere.
    """
    if settings.max_pending_batch_items > 0:
        return settings.max_pending_batch_items
    return max(8 * batch_size, max_items_per_request)


class StageTimer:
    """Collects wall-clock time per named stage for the response's `timings`."""

    def __init__(self) -> None:
        self._stages: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        with TELEMETRY.stage_scope(name):  # a tracing span, when installed (cir_common.telemetry)
            try:
                yield
            finally:
                self.record(name, (time.perf_counter() - started) * 1000.0)

    def record(self, name: str, milliseconds: float) -> None:
        self._stages.append((name, milliseconds))
        TELEMETRY.stage_done(name, milliseconds / 1000.0)

    def as_protos(self) -> list[common_pb2.StageTiming]:
        return [common_pb2.StageTiming(stage=name, milliseconds=ms) for name, ms in self._stages]


class ServiceLifecycle(Protocol):
    """What a service's servicer offers the process entry: load the model; release it at the end."""

    async def load(self) -> None: ...

    async def close(self) -> None: ...


@runtime_checkable
class BackendCheck(Protocol):
    """A service whose readiness depends on a backend it reaches over the network (e.g. a gallery store)."""

    async def check(self) -> None:
        """Raises while the backend cannot serve."""
        ...


def run_service(
    *,
    display_name: str,
    service_name: str,
    settings_loader: Callable[[], ServiceSettings],
    build: Callable[[ServiceSettings, ServiceHost], ServiceLifecycle],
    authorizer: Callable[[Any], Authorizer | None] | None = None,
) -> int:
    """Process entry point: load settings, start the server, load the model, serve until SIGTERM.

    `build` registers the servicer on `host.server` and returns it. Health turns SERVING when its
    `load()` returns; `close()` runs after the server has drained its in-flight calls. `authorizer(settings)`
    gives the host its `authorize` hook (API keys), or None for none.
    """
    try:
        settings = settings_loader()
        # Metrics bind their port here: a port in use is a configuration error like a bad setting.
        operations.install(settings, display_name)
    except ConfigError as error:
        print(f"{display_name}: configuration error: {error.message}", file=sys.stderr)
        return 2

    async def main() -> None:
        authorize = authorizer(settings) if authorizer is not None else None
        host = ServiceHost([service_name], settings, display_name, authorize)
        service = build(settings, host)
        try:
            await host.run(service.load, service.check if isinstance(service, BackendCheck) else None)
        finally:
            await service.close()

    try:
        asyncio.run(main())
    except ConfigError as error:
        print(f"{display_name}: cannot start: {error.message}", file=sys.stderr)
        return 2
    return 0
