"""The encoder's settings check themselves when loaded: a bad value stops the service before a model loads."""

from __future__ import annotations

import pytest

from cir_common.config import load_settings
from cir_common.errors import ConfigError
from cir_common.vocabulary import ENCODER, Precision, Preprocessing
from cir_encoder.settings import ENV_PREFIX, SECTION, EncoderSettings


def _load(**variables: str) -> EncoderSettings:
    environ = {f"{ENV_PREFIX}{name.upper()}": value for name, value in variables.items()}
    return load_settings(EncoderSettings, section=SECTION, env_prefix=ENV_PREFIX, environ=environ)


def test_the_defaults_are_valid_and_the_identity_comes_from_the_vocabulary():
    settings = _load()
    assert (settings.preprocessing, settings.precision) == (Preprocessing.TARGETPAD, Precision.AUTO)
    assert (ENV_PREFIX, SECTION, settings.port) == ("CIR_ENCODER_", "encoder", ENCODER.default_port)


def test_choices_are_parsed_into_their_enums():
    settings = _load(preprocessing="Model_Default", precision="pure_fp16")
    assert settings.preprocessing is Preprocessing.MODEL_DEFAULT
    assert settings.precision is Precision.PURE_FP16


@pytest.mark.parametrize(
    ("variables", "says"),
    [
        (
            {"preprocessing": "squash"},
            "CIR_ENCODER_PREPROCESSING='squash': choose targetpad or model_default",
        ),
        ({"precision": "int8"}, "CIR_ENCODER_PRECISION='int8': choose auto, fp32, "),
        ({"batch_max_size": "0"}, "CIR_ENCODER_BATCH_MAX_SIZE must be at least 1, got 0"),
        ({"max_items_per_request": "0"}, "CIR_ENCODER_MAX_ITEMS_PER_REQUEST must be at least 1, got 0"),
        ({"max_text_chars": "-1"}, "CIR_ENCODER_MAX_TEXT_CHARS must be at least 1, got -1"),
        ({"batch_window_ms": "-5"}, "CIR_ENCODER_BATCH_WINDOW_MS must be at least 0, got -5.0"),
        ({"target_pad_ratio": "0"}, "CIR_ENCODER_TARGET_PAD_RATIO=0.0 must be positive"),
        ({"max_aspect_ratio": "0.5"}, "CIR_ENCODER_MAX_ASPECT_RATIO=0.5 must be at least 1"),
        ({"max_decoded_image_bytes": "0"}, "CIR_ENCODER_MAX_DECODED_IMAGE_BYTES=0 must be positive"),
        (
            {"mapping_networks": "searle=/models/searle.pt"},
            "default_mapping_network 'lincir' is not among the configured mapping networks (searle)",
        ),
    ],
)
def test_a_bad_value_is_refused_at_load_naming_the_setting(variables, says):
    with pytest.raises(ConfigError) as error:
        _load(**variables)
    assert says in error.value.message


def test_settings_built_in_code_check_themselves_too():
    with pytest.raises(ConfigError, match="CIR_ENCODER_PREPROCESSING='bogus'"):
        EncoderSettings(preprocessing="bogus")  # type: ignore[arg-type]
    settings = EncoderSettings(preprocessing="model_default", precision="float16")  # type: ignore[arg-type]
    assert (settings.preprocessing, settings.precision) == (Preprocessing.MODEL_DEFAULT, Precision.FP16)
