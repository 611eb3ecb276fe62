"""Image decoding and image sources: every bad input is an InvalidArgument that names the item and the fix."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from cir.common.v1 import common_pb2
from cir_common.errors import InvalidArgument
from cir_common.images import ImageLimits, content_hash, decode_image, probe_image, resolve_image_source

LIMITS = ImageLimits()


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    shape = (size[1], size[0], channels) if channels > 1 else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but carries no pixel data: a bomb's header, costing 57 bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"") + _png_chunk(b"IEND", b"")
    )


def _rejected(data: bytes, limits: ImageLimits = LIMITS, label: str = "images[3]") -> str:
    with pytest.raises(InvalidArgument) as info:
        decode_image(data, limits, label=label)
    message = info.value.message
    assert message.startswith(label), message
    return message


# --- bad inputs -------------------------------------------------------------------------------------------


def test_empty_input_is_rejected():
    message = _rejected(b"")
    assert "empty (0 bytes)" in message


def test_input_over_max_bytes_reports_size_and_limit():
    data = _encode(_noise((64, 64)), "PNG")
    message = _rejected(data, ImageLimits(max_bytes=1000))
    assert f"{len(data):,} bytes" in message
    assert "limit of 1,000 bytes" in message


def test_non_image_names_supported_formats_and_first_bytes():
    message = _rejected(b"hello world, not a picture")
    assert "not a recognised image format (JPEG, PNG, WebP, GIF, BMP, TIFF)" in message
    assert "68 65 6c 6c 6f" in message  # "hello"


@pytest.mark.parametrize(
    ("data", "hint"),
    [
        (b"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ", "base64"),
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", "HTML/XML/SVG"),
        (b"/data/images/cat.jpg", "`uri` field"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIC/AVIF"),
    ],
)
def test_non_image_gets_a_hint_about_what_it_looks_like(data, hint):
    message = _rejected(data)
    assert "not a recognised image format" in message
    assert hint in message


def test_unsupported_format_is_refused_even_if_pillow_could_read_it():
    message = _rejected(_encode(_noise((8, 8)), "PPM"))
    assert "not a recognised image format" in message


def test_truncated_jpeg_is_rejected_when_pixels_are_loaded():
    data = _encode(_noise((256, 256)), "JPEG", quality=90)
    message = _rejected(data[: len(data) * 2 // 3])
    assert "truncated or corrupt JPEG image" in message
    assert "send the complete file" in message


def test_jpeg_cut_inside_its_header_is_rejected_as_corrupt():
    data = _encode(_noise((64, 64)), "JPEG")
    message = _rejected(data[:300])
    assert "truncated or corrupt" in message


def test_png_with_corrupt_pixel_data_is_rejected():
    data = bytearray(_encode(_noise((128, 128)), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 40 : idat + 400] = b"\x00" * 360  # CRC no longer matches and the deflate stream is garbage
    message = _rejected(bytes(data))
    assert "corrupt" in message


def test_bomb_header_beyond_pillows_own_limit_is_mapped_to_invalid_argument():
    data = _png_header_only(20000, 20000)  # 4e8 pixels: Pillow raises DecompressionBombError when opening
    assert len(data) < 100
    message = _rejected(data)
    assert "too many pixels to decode safely" in message
    assert "50,000,000" in message
    assert "downscale" in message


def test_pixel_limit_is_checked_from_the_header_before_decoding():
    # No pixel data at all: had it tried to load, the error would be "truncated", not the pixel limit.
    message = _rejected(_png_header_only(2000, 2000), ImageLimits(max_pixels=1_000_000))
    assert "2000x2000 = 4,000,000 pixels" in message
    assert "limit is 1,000,000 pixels" in message


def test_pixel_limit_applies_to_a_valid_image():
    data = _encode(_noise((200, 100)), "PNG")
    assert "too many pixels" in _rejected(data, ImageLimits(max_pixels=200 * 100 - 1))
    assert decode_image(data, ImageLimits(max_pixels=200 * 100)).width == 200


def test_pillow_global_pixel_limit_is_not_changed():
    before = Image.MAX_IMAGE_PIXELS
    _rejected(_png_header_only(2000, 2000), ImageLimits(max_pixels=10))
    decode_image(_encode(_noise((8, 8)), "PNG"), ImageLimits(max_pixels=10**10))
    assert before == Image.MAX_IMAGE_PIXELS


@pytest.mark.parametrize(("width", "height"), [(0, 10), (10, 0)])
def test_zero_size_png_is_rejected(width, height):
    message = _rejected(_png_header_only(width, height))
    assert f"declares a {width}x{height} image" in message
    assert "at least one pixel" in message


def test_zero_size_gif_is_rejected():
    gif = b"GIF89a" + struct.pack("<HH", 0, 5) + b"\x00\x00\x00;"
    assert "declares a 0x5 image" in _rejected(gif)


def test_default_label_is_image():
    with pytest.raises(InvalidArgument, match=r"^image is empty"):
        decode_image(b"", LIMITS)


# --- good inputs ------------------------------------------------------------------------------------------


def _decoded_rgb(data: bytes):
    decoded = decode_image(data, LIMITS)
    assert decoded.image.mode == "RGB"
    assert decoded.content_sha256 == hashlib.sha256(data).hexdigest()
    assert (decoded.width, decoded.height) == decoded.image.size
    return decoded


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_each_supported_format_decodes_to_rgb(fmt):
    decoded = _decoded_rgb(_encode(_noise((40, 30)), fmt))
    assert decoded.format == fmt
    assert (decoded.width, decoded.height) == (40, 30)


def test_lossless_rgb_pixels_are_preserved():
    img = _noise((16, 16), seed=7)
    decoded = _decoded_rgb(_encode(img, "PNG"))
    assert np.array_equal(np.asarray(decoded.image), np.asarray(img))


def test_rgba_is_composited_onto_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    img.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    img.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    decoded = _decoded_rgb(_encode(img, "PNG"))
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255)
    assert all(abs(c - 127) <= 1 for c in decoded.image.getpixel((1, 0)))
    assert decoded.image.getpixel((2, 2)) == (255, 0, 0)


def test_grayscale_with_alpha_is_composited_onto_white():
    img = Image.new("LA", (2, 1), (0, 255))
    img.putpixel((1, 0), (0, 0))
    decoded = _decoded_rgb(_encode(img, "PNG"))
    assert decoded.image.getpixel((0, 0)) == (0, 0, 0)
    assert decoded.image.getpixel((1, 0)) == (255, 255, 255)


def test_palette_with_transparent_index_is_composited_onto_white():
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    decoded = _decoded_rgb(_encode(img, "PNG", transparency=0))
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255)
    assert decoded.image.getpixel((1, 0)) == (0, 255, 0)


def test_palette_gif_decodes_to_its_colours():
    img = Image.new("P", (3, 3))
    img.putpalette([200, 10, 20] + [0, 0, 0] * 255)
    decoded = _decoded_rgb(_encode(img, "GIF"))
    assert decoded.image.getpixel((1, 1)) == (200, 10, 20)


@pytest.mark.parametrize(("mode", "value", "expected"), [("L", 77, (77, 77, 77)), ("1", 1, (255, 255, 255))])
def test_grayscale_and_bilevel(mode, value, expected):
    decoded = _decoded_rgb(_encode(Image.new(mode, (5, 5), value), "PNG"))
    assert decoded.image.getpixel((2, 2)) == expected


def test_cmyk_jpeg_is_converted():
    decoded = _decoded_rgb(_encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100))
    r, g, b = decoded.image.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60  # pure red


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    img = Image.new("I;16", (3, 1))
    for x, v in enumerate((0, 32896, 65535)):
        img.putpixel((x, 0), v)
    decoded = _decoded_rgb(_encode(img, "PNG"))
    assert [decoded.image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_tiff_in_unit_range_is_scaled():
    img = Image.new("F", (2, 1))
    img.putpixel((0, 0), 0.0)
    img.putpixel((1, 0), 1.0)
    decoded = _decoded_rgb(_encode(img, "TIFF"))
    assert [decoded.image.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), (255, 255, 255)]


def test_exif_orientation_is_applied_unless_disabled():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees
    data = _encode(img, "JPEG", exif=exif)
    assert decode_image(data, LIMITS).image.size == (20, 40)
    assert decode_image(data, LIMITS, apply_exif_orientation=False).image.size == (40, 20)


def test_decoded_image_is_fully_loaded():
    decoded = _decoded_rgb(_encode(_noise((32, 32)), "JPEG"))
    # A lazily opened image still has tiles to decode; ours has none and its pixels are readable.
    assert not getattr(decoded.image, "tile", [])
    assert np.asarray(decoded.image).shape == (32, 32, 3)


def test_decoding_from_many_threads_matches_serial_results():
    blobs = [
        _encode(_noise((64, 48), seed=s), fmt) for s, fmt in enumerate(["PNG", "JPEG", "WEBP", "BMP"] * 6)
    ]
    serial = [np.asarray(decode_image(b, LIMITS).image) for b in blobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda b: np.asarray(decode_image(b, LIMITS).image), blobs))
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel, strict=True))


def test_content_hash_is_sha256_hex():
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()


# --- image sources ----------------------------------------------------------------------------------------


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    outside = tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    return allowed, outside


def _uri(uri: str) -> common_pb2.Image:
    return common_pb2.Image(uri=uri)


def _source_error(image: common_pb2.Image, allowed_roots, **kwargs) -> str:
    with pytest.raises(InvalidArgument) as info:
        resolve_image_source(image, allowed_roots, **kwargs)
    return info.value.message


def test_data_is_returned_as_is():
    assert resolve_image_source(common_pb2.Image(data=b"\x89PNG..."), []) == b"\x89PNG..."


def test_unset_source_is_rejected():
    assert "image has neither data nor uri" in _source_error(common_pb2.Image(), [])


def test_file_uri_and_absolute_path_under_a_root_are_read(roots):
    allowed, _ = roots
    (allowed / "a b.png").write_bytes(b"pixels")
    assert resolve_image_source(_uri(f"file://{allowed}/a%20b.png"), [allowed]) == b"pixels"
    assert resolve_image_source(_uri(f"file://localhost{allowed}/a%20b.png"), [allowed]) == b"pixels"
    assert resolve_image_source(_uri(str(allowed / "a b.png")), [allowed]) == b"pixels"


def test_uris_are_refused_when_no_roots_are_configured(roots):
    allowed, _ = roots
    (allowed / "x.png").write_bytes(b"pixels")
    message = _source_error(_uri(str(allowed / "x.png")), [])
    assert "URI images are disabled" in message


def test_path_outside_the_roots_is_refused(roots):
    allowed, outside = roots
    (outside / "secret.png").write_bytes(b"secret")
    message = _source_error(_uri(str(outside / "secret.png")), [allowed])
    assert "outside the folders this server allows" in message


def test_dot_dot_cannot_climb_out_of_a_root(roots):
    allowed, outside = roots
    (outside / "secret.png").write_bytes(b"secret")
    message = _source_error(_uri(f"{allowed}/../outside/secret.png"), [allowed])
    assert "outside the folders" in message


def test_symlink_escaping_the_root_is_refused(roots):
    allowed, outside = roots
    (outside / "secret.png").write_bytes(b"secret")
    (allowed / "link.png").symlink_to(outside / "secret.png")
    (allowed / "linked_dir").symlink_to(outside, target_is_directory=True)
    assert "outside the folders" in _source_error(_uri(str(allowed / "link.png")), [allowed])
    assert "outside the folders" in _source_error(_uri(f"file://{allowed}/linked_dir/secret.png"), [allowed])


def test_symlink_within_the_root_is_followed(roots):
    allowed, _ = roots
    (allowed / "real.png").write_bytes(b"pixels")
    (allowed / "alias.png").symlink_to(allowed / "real.png")
    assert resolve_image_source(_uri(str(allowed / "alias.png")), [allowed]) == b"pixels"


def test_root_given_through_a_symlink_still_matches(roots, tmp_path):
    allowed, _ = roots
    (allowed / "x.png").write_bytes(b"pixels")
    root_link = tmp_path / "root_link"
    root_link.symlink_to(allowed, target_is_directory=True)
    assert resolve_image_source(_uri(str(root_link / "x.png")), [root_link]) == b"pixels"


def test_missing_file_names_the_path(roots):
    allowed, _ = roots
    missing = str(allowed / "nope.png")
    message = _source_error(_uri(missing), [allowed])
    assert missing in message
    assert "does not exist" in message


def test_missing_file_outside_roots_does_not_reveal_existence(roots):
    allowed, outside = roots
    assert "outside the folders" in _source_error(_uri(str(outside / "nope.png")), [allowed])


@pytest.mark.parametrize(
    "uri", ["http://example.com/cat.jpg", "https://x/y.png", "s3://bucket/key", "C:/x.png"]
)
def test_other_schemes_are_refused(uri, roots):
    allowed, _ = roots
    assert "only file:// URIs are supported" in _source_error(_uri(uri), [allowed])


def test_file_uri_with_remote_host_is_refused(roots):
    allowed, _ = roots
    assert "only local files" in _source_error(_uri(f"file://fileserver{allowed}/x.png"), [allowed])


def test_relative_path_is_refused(roots):
    allowed, _ = roots
    assert "neither a file:// URI nor an absolute path" in _source_error(_uri("images/x.png"), [allowed])


def test_directory_and_fifo_are_refused_without_hanging(roots):
    allowed, _ = roots
    (allowed / "sub").mkdir()
    fifo = allowed / "pipe"
    os.mkfifo(fifo)
    assert "not a regular file" in _source_error(_uri(str(allowed / "sub")), [allowed])
    assert "not a regular file" in _source_error(_uri(str(fifo)), [allowed])


def test_file_over_max_bytes_is_refused_before_reading(roots):
    allowed, _ = roots
    (allowed / "big.png").write_bytes(b"x" * 2000)
    message = _source_error(_uri(str(allowed / "big.png")), [allowed], max_bytes=1000)
    assert "2,000 bytes, over the limit of 1,000 bytes" in message
    assert len(resolve_image_source(_uri(str(allowed / "big.png")), [allowed], max_bytes=2000)) == 2000


def test_uri_image_round_trips_through_decode(roots):
    allowed, _ = roots
    data = _encode(_noise((10, 12)), "PNG")
    (allowed / "img.png").write_bytes(data)
    raw = resolve_image_source(_uri(f"file://{allowed}/img.png"), [allowed])
    decoded = decode_image(raw, LIMITS, label="images[0]")
    assert (decoded.width, decoded.height, decoded.content_sha256) == (10, 12, content_hash(data))


# --- header probe (for the decoded-bytes budget) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fmt", "per_pixel"),
    [
        ("RGB", "PNG", 4),  # Pillow keeps RGB in four bytes a pixel; no copy
        ("L", "PNG", 1 + 4),  # one byte a pixel, plus the RGB copy
        ("RGBA", "PNG", 4 + 4 + 12),  # plus the RGBA copy, white canvas and composite
        ("I;16", "PNG", 2 + 4 + 24),  # plus the numpy scratch of the 16-bit scaling
    ],
)
def test_probe_estimates_the_decoded_size_from_the_header(mode, fmt, per_pixel):
    img = _noise((40, 30), "RGB").convert(mode) if mode != "I;16" else Image.new("I;16", (40, 30), 300)
    header = probe_image(_encode(img, fmt), LIMITS, label="images[0]")
    assert (header.width, header.height, header.format) == (40, 30, fmt)
    assert header.decoded_bytes == 40 * 30 * per_pixel


def test_probe_reads_no_pixels_and_checks_what_decode_checks():
    # A bomb's header alone (no pixel data) is sized, and refused past the pixel limit as decode_image does.
    header = probe_image(_png_header_only(7000, 7000), LIMITS)
    assert header.decoded_bytes == 7000 * 7000 * 4
    with pytest.raises(InvalidArgument, match="too many pixels"):
        probe_image(_png_header_only(7000, 7000), ImageLimits(max_pixels=1_000_000), label="images[2]")
    with pytest.raises(InvalidArgument, match="not a recognised image format"):
        probe_image(b"hello", LIMITS)


def test_probe_counts_the_turned_copy_of_an_exif_rotated_photo():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: decode_image turns it, which copies the pixels
    data = _encode(_noise((40, 30)), "JPEG", exif=exif.tobytes())
    assert probe_image(data, LIMITS).decoded_bytes == 40 * 30 * (4 + 4)
    assert probe_image(data, LIMITS, apply_exif_orientation=False).decoded_bytes == 40 * 30 * 4
