"""Image input for every service: where the bytes come from, and turning them into a safe RGB picture.

Every image a caller sends is untrusted. Decoding is limited to a few common formats (Pillow's other
plugins include some that shell out or are rarely audited), sizes are checked before any pixel is
decoded, and every failure becomes an InvalidArgument that names the item and says what to change.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import re
import stat
import struct
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cir.common.v1 import common_pb2
from cir_common.admission import FairSemaphore, MeanDuration, retry_after_ms, to_thread_to_completion
from cir_common.errors import InvalidArgument, ResourceExhausted

MIB = 1024 * 1024

# Pillow format names tried when opening; anything else is refused as "not an image".
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_FORMATS_TEXT = "JPEG, PNG, WebP, GIF, BMP, TIFF"

_EXIF_ORIENTATION = 0x0112
_HIGH_BIT_DEPTH_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 32 * MIB
    # Decompression-bomb guard on width * height, checked from the header before pixels are decoded.
    max_pixels: int = 50_000_000


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, pixels loaded
    content_sha256: str  # of the encoded bytes, for cache keys
    width: int
    height: int
    format: str  # Pillow's name of the encoded format, e.g. "JPEG"


def content_hash(data: bytes) -> str:
    """Hex sha256 of `data`: the content part of cache keys."""
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes, limits: ImageLimits, *, label: str = "image", apply_exif_orientation: bool = True
) -> DecodedImage:
    """Decode encoded image bytes into a fully loaded RGB image, or raise InvalidArgument.

    Transparent pixels are composited onto white. With `apply_exif_orientation` the picture is turned
    the way a viewer would show it (phone photos store the rotation only in EXIF).
    Safe to call from several threads at once: nothing global is changed.
    """
    img = _open_checked(data, limits, label)
    fmt = img.format or "unknown"
    try:
        img.load()
        if apply_exif_orientation:
            img = _oriented(img)
        rgb = _to_rgb(img)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(label, limits, str(exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow's plugins raise many types; here all of them mean bad input
        raise InvalidArgument(
            f"{label} is a truncated or corrupt {fmt} image ({type(exc).__name__}: {exc}); "
            "send the complete file, or re-save it as PNG or JPEG"
        ) from exc
    return DecodedImage(
        image=rgb, content_sha256=content_hash(data), width=rgb.width, height=rgb.height, format=fmt
    )


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header tells before any pixel is decoded."""

    width: int
    height: int
    format: str  # Pillow's name, e.g. "PNG"
    mode: str  # Pillow's pixel mode of the decode, e.g. "RGB", "P", "I;16"
    # Estimated peak memory of `decode_image` on it: the decoded pixels plus the RGB copy and scratch.
    decoded_bytes: int


def probe_image(
    data: bytes, limits: ImageLimits, *, label: str = "image", apply_exif_orientation: bool = True
) -> ImageHeader:
    """Reads the header only (cheap, no pixels) and checks it as `decode_image` would (same errors).

    Its `decoded_bytes` is what to reserve in a `DecodeBudget` before decoding. Blocking (it parses the
    header, and EXIF for the orientation): call it through `asyncio.to_thread` from async code.
    """
    img = _open_checked(data, limits, label)
    return ImageHeader(
        width=img.width,
        height=img.height,
        format=img.format or "unknown",
        mode=img.mode,
        decoded_bytes=_decoded_bytes_estimate(img, apply_exif_orientation),
    )


def _open_checked(data: bytes, limits: ImageLimits, label: str) -> Image.Image:
    """Opens `data` lazily (header only) and applies every check that needs no pixels."""
    size = len(data)
    if size == 0:
        raise InvalidArgument(f"{label} is empty (0 bytes); send the encoded image file ({_FORMATS_TEXT})")
    if size > limits.max_bytes:
        raise InvalidArgument(
            f"{label} is {size:,} bytes, over the limit of {limits.max_bytes:,} bytes; "
            "send a smaller or more compressed image"
        )

    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise _bomb_error(label, limits, str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise InvalidArgument(_unidentified_message(label, data)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        # The format was recognised but its header could not be read.
        raise InvalidArgument(
            f"{label} is a truncated or corrupt image ({exc}); send the complete file"
        ) from exc

    fmt = img.format or "unknown"
    width, height = img.size
    if width <= 0 or height <= 0:
        raise InvalidArgument(
            f"{label} is a {width}x{height} {fmt} image; send an image with at least one pixel"
        )
    if width * height > limits.max_pixels:
        raise _bomb_error(label, limits, f"{width}x{height} = {width * height:,} pixels")
    return img


# Bytes Pillow keeps per pixel of a decoded image: 1 for one-byte modes, 2 for 16-bit, else 4 (three-band
# modes such as RGB are stored padded to four bytes).
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_RGB_BYTES = 4
# Numpy intermediates of the 16-bit and float conversions in `_to_rgb` (int64 and float32 copies).
_CONVERSION_SCRATCH_BYTES = 24


def _pixel_bytes(mode: str) -> int:
    if mode in _ONE_BYTE_MODES:
        return 1
    if mode.startswith("I;16"):
        return 2
    return 4


def _header_orientation(img: Image.Image) -> int:
    # Pillow's PNG getexif() decodes the whole image to look for an eXIf chunk after the pixels; only one
    # found before them is read here (a later one, rare, makes the estimate one copy short).
    if img.format == "PNG" and "exif" not in img.info:
        return 1
    return int(img.getexif().get(_EXIF_ORIENTATION, 1))


def _decoded_bytes_estimate(img: Image.Image, apply_exif_orientation: bool) -> int:
    """Peak memory of `decode_image` on `img`, from its header: an estimate, meant to err on the high side."""
    pixels = img.width * img.height
    per_pixel = _pixel_bytes(img.mode)
    if apply_exif_orientation and _header_orientation(img) not in (0, 1):
        per_pixel += _pixel_bytes(img.mode)  # the turned copy
    if img.mode != "RGB":
        per_pixel += _RGB_BYTES  # the RGB copy the models get
        if img.mode in _HIGH_BIT_DEPTH_MODES or img.mode == "F":
            per_pixel += _CONVERSION_SCRATCH_BYTES
        elif img.has_transparency_data:
            per_pixel += 3 * _RGB_BYTES  # RGBA copy, white canvas, composite
    return pixels * per_pixel


@dataclass
class DecodeBudgetStats:
    reservations: int = 0  # granted, at once or after waiting
    waited: int = 0  # of those, the ones that had to wait for room
    rejected: int = 0  # no room within the wait: RESOURCE_EXHAUSTED
    oversized: int = 0  # larger than the whole budget: INVALID_ARGUMENT at once
    peak_bytes: int = 0  # most bytes reserved at once


class DecodeBudget:
    """A process-wide budget of decoded image bytes in memory, shared by every request of a service.

    Sixteen concurrent 47 KB PNGs of 7000 x 7000 pixels take about 3 GB once decoded: limits per image do
    not bound the process. Callers reserve the estimated size (`probe_image(...).decoded_bytes`, known from
    the header) before decoding and hold it until the decoded pixels are dropped:

        header = await asyncio.to_thread(probe_image, data, limits, label=label)
        async with budget.reserve(header.decoded_bytes, label=label):
            decoded = await asyncio.to_thread(decode_image, data, limits, label=label)
            ...  # use decoded; it should not outlive the block

    A caller waits, first come first served, up to `max_wait_s` (or until its call is cancelled, as gRPC
    does at the deadline), then gets RESOURCE_EXHAUSTED with a retry hint; a reservation larger than the
    whole budget can never succeed and is INVALID_ARGUMENT at once. Use it from the event loop only.
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        max_wait_s: float,
        setting: str = "max_decoded_image_bytes",
        wait_setting: str = "max_decoded_image_wait_s",
    ) -> None:
        self._bytes = FairSemaphore(capacity_bytes)
        self.max_wait_s = max_wait_s
        self._setting = setting
        self._wait_setting = wait_setting
        self._hold_time = MeanDuration()
        self.stats = DecodeBudgetStats()

    @property
    def capacity_bytes(self) -> int:
        return self._bytes.capacity

    @property
    def in_use_bytes(self) -> int:
        return self._bytes.in_use

    @property
    def waiting(self) -> int:
        return self._bytes.waiting

    @asynccontextmanager
    async def reserve(self, nbytes: int, *, label: str = "the images") -> AsyncIterator[None]:
        """Holds `nbytes` of the budget for the body; `label` names what for in error messages."""
        if nbytes <= 0:
            yield
            return
        if nbytes > self.capacity_bytes:
            self.stats.oversized += 1
            raise InvalidArgument(
                f"{label}: about {_mib(nbytes)} once decoded, more than this server's whole budget of "
                f"{_mib(self.capacity_bytes)} for images decoded at once ({self._setting}); send fewer "
                "images per request, or smaller ones"
            )
        try:
            waited = await self._bytes.acquire(nbytes, self.max_wait_s)
        except TimeoutError:
            self.stats.rejected += 1
            raise ResourceExhausted(
                f"{label}: about {_mib(nbytes)} once decoded, which did not fit in the server's budget of "
                f"{_mib(self.capacity_bytes)} for images decoded at once ({self._setting}) within "
                f"{self.max_wait_s:g} s ({self._wait_setting}); retry after the delay in the "
                "x-cir-retry-after-ms trailer, or send smaller images",
                retry_after_ms=retry_after_ms(self._hold_time.seconds),
            ) from None
        self.stats.reservations += 1
        self.stats.waited += waited
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.in_use_bytes)
        started = time.monotonic()
        try:
            yield
        finally:
            self._bytes.release(nbytes)
            self._hold_time.observe(time.monotonic() - started)


@asynccontextmanager
async def decoded_within(
    budget: DecodeBudget,
    data: bytes,
    limits: ImageLimits,
    *,
    label: str = "image",
    apply_exif_orientation: bool = True,
) -> AsyncIterator[DecodedImage]:
    """One image decoded within `budget`, from async code: the header probed off the event loop, its size
    reserved (waiting as DecodeBudget does), the pixels decoded off the loop, and the reservation held until
    the block ends. Keep the image only inside the block. Errors are decode_image's and DecodeBudget's."""
    header = await asyncio.to_thread(
        probe_image, data, limits, label=label, apply_exif_orientation=apply_exif_orientation
    )
    async with budget.reserve(header.decoded_bytes, label=label):
        yield await to_thread_to_completion(
            functools.partial(decode_image, label=label, apply_exif_orientation=apply_exif_orientation),
            data,
            limits,
        )


def _mib(nbytes: int) -> str:
    return f"{nbytes / MIB:,.1f} MiB"


def _bomb_error(label: str, limits: ImageLimits, detail: str) -> InvalidArgument:
    return InvalidArgument(
        f"{label} has too many pixels to decode safely ({detail}); the limit is {limits.max_pixels:,} "
        "pixels (width x height); downscale the image"
    )


def upright_rgb(img: Image.Image) -> Image.Image:
    """An opened image as the models see it: EXIF orientation applied, RGB, transparency on white."""
    return _to_rgb(_oriented(img))


def _oriented(img: Image.Image) -> Image.Image:
    # exif_transpose always copies; skip it for the common case of no rotation.
    if img.getexif().get(_EXIF_ORIENTATION, 1) in (0, 1):
        return img
    return ImageOps.exif_transpose(img)


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _HIGH_BIT_DEPTH_MODES:
        # Pillow's own conversion clips 16-bit values at 255 (a mostly white picture); scale instead.
        # Integer arithmetic keeps a 50-megapixel image at 4 bytes per pixel.
        wide = np.clip(np.asarray(img).astype(np.int64, copy=False), 0, 65535).astype(np.uint32)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        # Float images carry no range; values within [0, 1] are taken as unit range, others as 0-255.
        arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if arr.size and float(arr.max()) <= 1.0:
            arr = arr * 255.0
        gray = np.clip(arr, 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if img.has_transparency_data:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


# Leading bytes of the formats we decode; used only to explain why a file was not accepted.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WebP"),
)
_BASE64_PREFIXES = (b"/9j/", b"iVBORw0KGgo", b"R0lGOD", b"UklGR", b"data:image/")


def _unidentified_message(label: str, data: bytes) -> str:
    for magic, offset, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            dims = _declared_size(data)
            if dims is not None and 0 in dims:
                return (
                    f"{label} is a {name} file that declares a {dims[0]}x{dims[1]} image; "
                    "send an image with at least one pixel"
                )
            return (
                f"{label} starts like a {name} file but could not be read (corrupt header); send a valid file"
            )
    base = f"{label} is not a recognised image format ({_FORMATS_TEXT})"
    head = data[:16]
    if data.startswith(_BASE64_PREFIXES):
        return f"{base}: it looks like base64 text; decode it and send the raw file bytes"
    if data[4:8] == b"ftyp":
        return f"{base}: it looks like HEIC/AVIF/MP4 (ISO media), which is not supported; convert it to JPEG"
    if head.lstrip().startswith(b"<"):
        return f"{base}: it looks like HTML/XML/SVG text; send a raster image"
    if data.startswith((b"/", b"file:", b"http:", b"https:")) and len(data) < 4096:
        return f"{base}: it looks like a path or URL; put it in the image's `uri` field instead of `data`"
    return f"{base}; its first bytes are {head.hex(' ')}"


def _declared_size(data: bytes) -> tuple[int, int] | None:
    # Pillow refuses zero-sized images without saying why; read the size from the header to tell the caller.
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack_from(">II", data, 16)
        return w, h
    if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:
        w, h = struct.unpack_from("<HH", data, 6)
        return w, h
    if data.startswith(b"BM") and len(data) >= 26:
        w, h = struct.unpack_from("<ii", data, 18)
        return w, abs(h)
    return None


# A URI scheme per RFC 3986; a Windows drive letter ("C:") would also match, and is refused like any scheme.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def resolve_image_source(
    image_proto: common_pb2.Image,
    allowed_roots: Sequence[Path],
    *,
    max_bytes: int | None = None,
    label: str = "image",
) -> bytes:
    """The encoded bytes of a `cir.common.v1.Image`: its `data`, or the file its `uri` names.

    A file is read only if its real path (symlinks followed) lies under one of `allowed_roots`; with no
    roots, URIs are refused. `max_bytes` refuses larger files before reading them. This does blocking file
    I/O: call it through `asyncio.to_thread` from async code.
    """
    source = image_proto.WhichOneof("source")
    if source is None:
        raise InvalidArgument(f"{label} has neither data nor uri; set one of them")
    if source == "data":
        return image_proto.data
    return _read_uri(image_proto.uri, allowed_roots, max_bytes, label)


def _read_uri(uri: str, allowed_roots: Sequence[Path], max_bytes: int | None, label: str) -> bytes:
    path_text = _uri_path(uri, label)
    if not allowed_roots:
        raise InvalidArgument(
            f"{label}: URI images are disabled on this server (no image_uri_roots configured); "
            "send the image bytes in `data` instead"
        )
    try:
        # strict=False: a missing file is reported below, after the root check, so that probing paths
        # outside the roots cannot tell which files exist.
        real = Path(path_text).resolve(strict=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InvalidArgument(f"{label}: cannot resolve path {path_text!r} ({exc})") from exc
    if not any(real.is_relative_to(Path(root).resolve()) for root in allowed_roots):
        raise InvalidArgument(
            f"{label}: path {path_text!r} is outside the folders this server allows images from "
            "(image_uri_roots); use a file under those folders or send the bytes in `data`"
        )
    return _read_regular_file(real, path_text, max_bytes, label)


def _uri_path(uri: str, label: str) -> str:
    if uri.startswith("/"):
        return uri
    if uri.lower().startswith("file:"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument(
                f"{label}: file URI {uri!r} names host {parts.netloc!r}; only local files (file:///path) work"
            )
        if parts.query or parts.fragment:
            raise InvalidArgument(
                f"{label}: file URI {uri!r} has a query or fragment; percent-encode '?' and '#'"
            )
        path = unquote(parts.path)
        if not path.startswith("/"):
            raise InvalidArgument(
                f"{label}: file URI {uri!r} has no absolute path; use file:///absolute/path"
            )
        return path
    if _SCHEME.match(uri):
        scheme = uri.split(":", 1)[0]
        raise InvalidArgument(
            f"{label}: uri scheme {scheme!r} is not supported: only file:// URIs are supported; "
            "download the image and send its bytes in `data`"
        )
    raise InvalidArgument(f"{label}: uri {uri!r} is neither a file:// URI nor an absolute path")


def _read_regular_file(real: Path, shown: str, max_bytes: int | None, label: str) -> bytes:
    # O_NOFOLLOW: the final component was a plain file when resolved; refuse it if swapped for a link since.
    # O_NONBLOCK: opening a FIFO must not hang the server; it is refused below as not a regular file.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(real, flags)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"{label}: file {shown!r} does not exist") from exc
    except PermissionError as exc:
        raise InvalidArgument(f"{label}: file {shown!r} cannot be read (permission denied)") from exc
    except OSError as exc:
        raise InvalidArgument(f"{label}: file {shown!r} cannot be opened ({exc.strerror})") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InvalidArgument(f"{label}: {shown!r} is not a regular file")
    with os.fdopen(fd, "rb") as f:
        if max_bytes is not None and info.st_size > max_bytes:
            raise InvalidArgument(
                f"{label}: file {shown!r} is {info.st_size:,} bytes, over the limit of {max_bytes:,} bytes"
            )
        try:
            # One byte past the limit so a file that grew after fstat is still caught by decode_image.
            return f.read() if max_bytes is None else f.read(max_bytes + 1)
        except OSError as exc:
            raise InvalidArgument(f"{label}: file {shown!r} could not be read ({exc.strerror})") from exc
