"""The captioner's settings check themselves when loaded, the default decoding against the limits included."""

from __future__ import annotations

import pytest

from cir_captioner.settings import ENV_PREFIX, SECTION, CaptionerSettings
from cir_common.config import load_settings
from cir_common.errors import ConfigError
from cir_common.vocabulary import CAPTIONER, DecodingVariant, Precision


def _load(**variables: str) -> CaptionerSettings:
    environ = {f"{ENV_PREFIX}{name.upper()}": value for name, value in variables.items()}
    return load_settings(CaptionerSettings, section=SECTION, env_prefix=ENV_PREFIX, environ=environ)


def test_the_defaults_are_valid_and_the_identity_comes_from_the_vocabulary():
    settings = _load()
    assert (settings.default_variant, settings.dtype) == (DecodingVariant.BEAM_SAMPLE, Precision.AUTO)
    assert (ENV_PREFIX, SECTION, settings.port) == ("CIR_CAPTIONER_", "captioner", CAPTIONER.default_port)


def test_choices_are_parsed_into_their_enums_torch_dtype_names_included():
    settings = _load(default_variant="NUCLEUS", dtype="float16")
    assert settings.default_variant is DecodingVariant.NUCLEUS
    assert settings.dtype is Precision.FP16
    assert _load(dtype="bfloat16").dtype is Precision.BF16 and _load(dtype="fp32").dtype is Precision.FP32


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        (
            {"default_variant": "greedy"},
            "CIR_CAPTIONER_DEFAULT_VARIANT='greedy': choose nucleus or beam_sample",
        ),
        ({"dtype": "int3"}, "CIR_CAPTIONER_DTYPE='int3': choose auto, fp32, "),
        (
            {"dtype": "pure_fp16"},
            "CIR_CAPTIONER_DTYPE='pure_fp16': choose auto, fp32, fp16 or bf16 (pure_* are open_clip's",
        ),
        ({"max_images_per_request": "0"}, "CIR_CAPTIONER_MAX_IMAGES_PER_REQUEST must be at least 1, got 0"),
        ({"batch_max_images": "0"}, "CIR_CAPTIONER_BATCH_MAX_IMAGES must be at least 1, got 0"),
        ({"max_num_beams": "0"}, "CIR_CAPTIONER_MAX_NUM_BEAMS must be at least 1, got 0"),
        ({"batch_window_ms": "-1"}, "CIR_CAPTIONER_BATCH_WINDOW_MS must be at least 0, got -1.0"),
        ({"default_num_captions": "0"}, "CIR_CAPTIONER_DEFAULT_NUM_CAPTIONS must be at least 1, got 0"),
        ({"max_num_beams": "8"}, "the default decoding does not fit this server's settings"),
        ({"max_num_beams": "8"}, "(CIR_CAPTIONER_MAX_NUM_BEAMS)"),
        ({"max_prompt_chars": "4"}, "(CIR_CAPTIONER_MAX_PROMPT_CHARS)"),
        ({"max_image_bytes": "0"}, "CIR_CAPTIONER_MAX_IMAGE_BYTES=0 must be positive"),
    ],
)
def test_a_bad_value_is_refused_at_load_naming_the_setting(variables, says):
    with pytest.raises(ConfigError) as error:
        _load(**variables)
    assert says in error.value.message


def test_settings_built_in_code_check_themselves_too():
    with pytest.raises(ConfigError, match="CIR_CAPTIONER_DEFAULT_VARIANT='greedy'"):
        CaptionerSettings(default_variant="greedy")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="the default decoding does not fit"):
        CaptionerSettings(default_variant="nucleus", default_num_captions=65)  # type: ignore[arg-type]
    settings = CaptionerSettings(default_variant="nucleus", dtype="float32")  # type: ignore[arg-type]
    assert (settings.default_variant, settings.dtype) == (DecodingVariant.NUCLEUS, Precision.FP32)
