"""Half-precision models (the GPU default) through the production loader: each path agrees with fp32.

torch runs fp16 / bf16 on the CPU too, so the casts that a CUDA replica depends on are checked here.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from support.profiles import settings_from_profile

from cir_encoder.clip_loading import load_clip
from cir_encoder.engine import EncoderEngine
from cir_encoder.settings import ENV_PREFIX, SECTION, EncoderSettings


def _engine(tiny_pack, precision: str) -> EncoderEngine:
    settings = settings_from_profile(EncoderSettings, SECTION, ENV_PREFIX, tiny_pack)
    clip = load_clip(
        settings.clip_model, settings.clip_pretrained, settings.clip_config_dir, "cpu", precision
    )
    return EncoderEngine(clip, {}, "lincir", 1.25)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def _features(engine: EncoderEngine) -> dict[str, np.ndarray]:
    images = [Image.new("RGB", (50, 90), (200, 30, 30)), Image.new("RGB", (64, 64), (20, 160, 40))]
    texts = engine.tokenize(["a photo of $ that is red", "a green square on white"])
    tokens = np.random.default_rng(0).standard_normal((2, engine.clip.text_width)).astype(np.float32)
    return {
        "images": engine.embed_images("targetpad", images),
        "texts": engine.embed_texts(texts.ids),
        "composed": engine.embed_composed(texts.ids, tokens),
    }


@pytest.fixture(scope="module")
def fp32_features(tiny_pack) -> dict[str, np.ndarray]:
    return _features(_engine(tiny_pack, "fp32"))


@pytest.mark.parametrize("precision", ["fp16", "bf16", "pure_fp16"])
def test_half_precision_models_embed_images_texts_and_prompts_like_fp32(tiny_pack, fp32_features, precision):
    engine = _engine(tiny_pack, precision)
    for name, features in _features(engine).items():
        assert features.dtype == np.float32, name
        assert features.shape == fp32_features[name].shape, name
        assert _cosines(features, fp32_features[name]).min() > 0.99, name


def test_precision_is_part_of_the_cache_identity(tiny_pack):
    assert _engine(tiny_pack, "fp16").identity != _engine(tiny_pack, "fp32").identity
