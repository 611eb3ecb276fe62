"""CVSI's target pad: output shape and where the padding goes on tall, wide and square images."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image
from support.profiles import settings_from_profile

from cir.common.v1 import common_pb2
from cir.encoder.v1 import encoder_pb2
from cir_common.errors import InvalidArgument
from cir_encoder import preprocessing
from cir_encoder.preprocessing import build_image_transform, check_aspect_ratio, pad_to_target_ratio
from cir_encoder.service import EncoderServicer
from cir_encoder.settings import ENV_PREFIX, SECTION, EncoderSettings


def _white(width: int, height: int) -> Image.Image:
    return Image.new("RGB", (width, height), (255, 255, 255))


@pytest.mark.parametrize(
    ("size", "expected_size", "expected_offset"),
    [
        ((100, 300), (240, 300), (70, 0)),  # tall: 300 / 1.25 = 240 wide, bars left and right
        ((300, 100), (300, 240), (0, 70)),  # wide: bars top and bottom
        ((200, 200), (200, 200), (0, 0)),  # square: untouched
        ((110, 100), (110, 100), (0, 0)),  # ratio 1.1 < 1.25: untouched
        ((125, 100), (125, 100), (0, 0)),  # exactly 1.25: padded to itself
    ],
)
def test_target_pad_geometry(size, expected_size, expected_offset):
    padded = pad_to_target_ratio(_white(*size), 1.25)
    assert padded.size == expected_size
    pixels = np.asarray(padded)
    x0, y0 = expected_offset
    # the original sits at the offset, white; everything outside it is black padding
    assert (pixels[y0 : y0 + size[1], x0 : x0 + size[0]] == 255).all()
    mask = np.ones(pixels.shape[:2], dtype=bool)
    mask[y0 : y0 + size[1], x0 : x0 + size[0]] = False
    assert (pixels[mask] == 0).all()


def test_odd_padding_truncates_like_the_published_code():
    padded = pad_to_target_ratio(_white(101, 300), 1.25)
    assert padded.size == (101 + 2 * int((240 - 101) / 2), 300)


def test_targetpad_keeps_the_ends_a_center_crop_would_cut(tiny_clip):
    wide = Image.new("RGB", (400, 100), (0, 0, 0))
    wide.paste((255, 0, 0), (0, 0, 80, 100))  # a red band at the far left
    targetpad = build_image_transform("targetpad", tiny_clip.preprocess, 1.25)(wide)
    default = build_image_transform("model_default", tiny_clip.preprocess, 1.25)(wide)
    size = tiny_clip.image_size[0]
    assert targetpad.shape == default.shape == (3, size, size)
    # red (high first channel) survives only with target pad
    assert targetpad[0].max() > default[0].max() + 1.0


@pytest.mark.parametrize("size", [(30, 90), (90, 30), (64, 64), (500, 499)])
def test_tensor_shape_for_any_input(tiny_clip, size):
    tensor = build_image_transform("targetpad", tiny_clip.preprocess, 1.25)(_white(*size))
    assert tuple(tensor.shape) == (3, *tiny_clip.image_size)


@pytest.fixture
def canvases(monkeypatch) -> list[tuple[int, int]]:
    """Records every canvas the preprocessing creates, and refuses (instead of allocating) a huge one."""
    sizes: list[tuple[int, int]] = []
    real_new = Image.new

    def recording_new(mode, size, *args, **kwargs):
        sizes.append(tuple(size))
        assert size[0] * size[1] <= 50_000_000, f"a {size[0]}x{size[1]} canvas was about to be allocated"
        return real_new(mode, size, *args, **kwargs)

    monkeypatch.setattr(preprocessing.Image, "new", recording_new)
    return sizes


def _recording_model_transform(seen: list[tuple[int, int]]):
    def transform(image: Image.Image) -> tuple[int, int]:
        seen.append(image.size)
        return image.size

    return transform


@pytest.mark.parametrize("kind", ["targetpad", "model_default"])
@pytest.mark.parametrize("size", [(65535, 1), (1, 65535), (20000, 100)])
def test_extreme_aspect_ratios_are_refused_before_any_canvas(canvases, kind, size):
    image = Image.frombytes("RGB", size, bytes(3 * size[0] * size[1]))
    canvases.clear()
    seen: list[tuple[int, int]] = []
    transform = build_image_transform(kind, _recording_model_transform(seen), 1.25, max_aspect_ratio=20.0)
    with pytest.raises(InvalidArgument) as refused:
        transform(image)
    ratio = max(size) // min(size)
    assert f"aspect ratio {ratio}:1 is beyond the limit of 20:1" in str(refused.value)
    assert canvases == [] and seen == []  # neither padded nor handed to the model's resize


def test_aspect_ratio_check_names_the_item_and_the_setting():
    check_aspect_ratio((2000, 100), 20.0)  # exactly at the limit: accepted
    with pytest.raises(InvalidArgument, match=r"images\[3\] is 2001x100: aspect ratio 20:1") as refused:
        check_aspect_ratio((2001, 100), 20.0, "images[3]", "CIR_ENCODER_MAX_ASPECT_RATIO")
    assert "CIR_ENCODER_MAX_ASPECT_RATIO" in str(refused.value) and "crop it" in str(refused.value)


def test_the_padded_canvas_stays_within_the_pixel_limit(canvases):
    # 2000 x 100 is within 20:1, but padding it first would make a 2000 x 1600 canvas (3.2 Mpx)
    wide = Image.new("RGB", (2000, 100), (255, 255, 255))
    canvases.clear()
    seen: list[tuple[int, int]] = []
    transform = build_image_transform(
        "targetpad", _recording_model_transform(seen), 1.25, max_canvas_pixels=1_000_000
    )
    transform(wide)
    assert canvases and all(w * h <= 1_000_000 for w, h in canvases)
    assert len(seen) == 1 and seen[0][0] * seen[0][1] <= 1_000_000
    width, height = seen[0]
    assert abs(width / height - 1.25) < 0.01  # still padded to the target ratio


def test_bounded_padding_matches_pad_then_resize_up_to_interpolation():
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, size=(100, 1000, 3), dtype=np.uint8))
    bounded = pad_to_target_ratio(wide, 1.25, max_pixels=200_000)
    assert bounded.size[0] * bounded.size[1] <= 200_000
    exact = pad_to_target_ratio(wide, 1.25).resize(bounded.size, Image.Resampling.BICUBIC)
    difference = np.abs(np.asarray(bounded, dtype=np.float32) - np.asarray(exact, dtype=np.float32))
    assert difference.mean() < 8.0  # the same picture: bars in the same place, content resampled
    # an image whose canvas fits is padded exactly as before
    assert (
        pad_to_target_ratio(wide, 1.25, max_pixels=800_000).tobytes()
        == pad_to_target_ratio(wide, 1.25).tobytes()
    )


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_service_refuses_a_long_image_before_batching(tiny_pack):
    settings = settings_from_profile(EncoderSettings, SECTION, ENV_PREFIX, tiny_pack, max_aspect_ratio=20.0)
    servicer = EncoderServicer(settings)

    async def call() -> None:
        await servicer.load()
        try:
            ok = common_pb2.Image(data=_png((64, 48)))
            long = common_pb2.Image(data=_png((65535, 1)))  # a few hundred bytes, within the pixel limit
            with pytest.raises(InvalidArgument) as refused:
                await servicer.EmbedImages(encoder_pb2.EmbedImagesRequest(images=[ok, long]), None)
            message = str(refused.value)
            assert "images[1] is 65535x1: aspect ratio 65535:1 is beyond the limit of 20:1" in message
            assert "CIR_ENCODER_MAX_ASPECT_RATIO" in message
            assert servicer.core.stats().images is not None and servicer.core.stats().images.items == 0
            answer = await servicer.EmbedImages(encoder_pb2.EmbedImagesRequest(images=[ok]), None)
            assert len(answer.embeddings) == 1
        finally:
            await servicer.close()

    asyncio.run(call())
