"""Image input for every service: where the bytes come from, and turning them into a safe RGB picture.

Every image a caller sends is untrusted. Decoding is limited to a few common formats (Pillow's other
plugins include some that shell out or are rarely audited), sizes are checked before any pixel is
decoded, and every failure becomes an InvalidArgument that names the item and says what to change.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import stat
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cir.common.v1 import common_pb2
from cir_common.errors import InvalidArgument

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
