"""The reasoner's settings check themselves: closed sets are enums, bad values are refused when loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from cir_common.config import load_settings
from cir_common.errors import ConfigError
from cir_common.vocabulary import Precision
from cir_reasoner.__main__ import SERVICE_NAME
from cir_reasoner.generation import resolve_prompt_format
from cir_reasoner.settings import ENV_PREFIX, SECTION, Backend, PromptFormat, ReasonerSettings


def _load(profile: Path | None = None, **environ: str) -> ReasonerSettings:
    return load_settings(
        ReasonerSettings, section=SECTION, env_prefix=ENV_PREFIX, profile=profile, environ=environ
    )


def test_the_identity_comes_from_the_vocabulary() -> None:
    assert (ENV_PREFIX, SECTION, ReasonerSettings().port) == ("CIR_REASONER_", "reasoner", 50053)
    assert SERVICE_NAME == "cir.reasoner.v1.ReasonerService"


def test_choices_load_as_enums(tmp_path: Path) -> None:
    profile = tmp_path / "profile.toml"
    profile.write_text(
        '[reasoner]\nbackend = "transformers"\nprompt_format = "completion"\ndtype = "bfloat16"\n',
        encoding="utf-8",
    )
    settings = _load(profile, CIR_REASONER_PROMPT_FORMAT="Chat")
    assert settings.backend is Backend.TRANSFORMERS
    assert settings.prompt_format is PromptFormat.CHAT  # the environment wins, in any case
    assert settings.dtype is Precision.BF16  # torch's spelling of bf16
    defaults = ReasonerSettings()
    assert (defaults.backend, defaults.prompt_format, defaults.dtype) == ("vllm", "auto", "auto")


def test_settings_built_from_strings_get_their_enums() -> None:
    settings = ReasonerSettings(
        backend="openai", openai_base_url="http://x/v1", openai_model="m", dtype="fp16"
    )  # type: ignore[arg-type]
    assert (settings.backend, settings.dtype) == (Backend.OPENAI, Precision.FP16)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"CIR_REASONER_BACKEND": "llama.cpp"},
            "CIR_REASONER_BACKEND='llama.cpp': choose vllm, openai or transformers",
        ),
        (
            {"CIR_REASONER_PROMPT_FORMAT": "json"},
            "CIR_REASONER_PROMPT_FORMAT='json': choose auto, chat or completion",
        ),
        (
            {"CIR_REASONER_DTYPE": "fp8"},
            "CIR_REASONER_DTYPE='fp8': choose auto, fp32, fp16, bf16, pure_fp16 or pure_bf16",
        ),
        # A precision of the vocabulary that only the encoder runs in.
        (
            {"CIR_REASONER_DTYPE": "pure_fp16"},
            "CIR_REASONER_DTYPE='pure_fp16': choose auto, fp32, fp16 or bf16",
        ),
        ({"CIR_REASONER_MAX_OUTPUT_TOKENS": "0"}, "CIR_REASONER_MAX_OUTPUT_TOKENS must be at least 1, got 0"),
        (
            {"CIR_REASONER_MAX_CAPTIONS_PER_REQUEST": "0"},
            "CIR_REASONER_MAX_CAPTIONS_PER_REQUEST must be at least",
        ),
        ({"CIR_REASONER_OPENAI_MAX_RETRIES": "-1"}, "CIR_REASONER_OPENAI_MAX_RETRIES >= 0"),
        ({"CIR_REASONER_OPENAI_MAX_CONCURRENCY": "0"}, "CIR_REASONER_OPENAI_MAX_CONCURRENCY must be >= 1"),
        (
            {"CIR_REASONER_BACKEND": "openai", "CIR_REASONER_OPENAI_MODEL": "tiny-llm"},
            "the openai backend needs CIR_REASONER_OPENAI_BASE_URL",
        ),
        ({"CIR_REASONER_PORT": "70000"}, "CIR_REASONER_PORT=70000 is not a TCP port"),
    ],
)
def test_bad_values_are_refused_when_the_settings_load(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(**environ)
    assert message in caught.value.message


def test_settings_built_directly_name_the_variable_and_list_the_choices() -> None:
    with pytest.raises(
        ConfigError, match=r"^CIR_REASONER_BACKEND='llama\.cpp': choose vllm, openai or transformers$"
    ):
        ReasonerSettings(backend="llama.cpp")  # type: ignore[arg-type]
    with pytest.raises(
        ConfigError, match=r"^CIR_REASONER_PROMPT_FORMAT='json': choose auto, chat or completion$"
    ):
        ReasonerSettings(prompt_format="json")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="CIR_REASONER_MAX_TEXT_CHARS must be at least 1"):
        ReasonerSettings(max_text_chars=0)


def test_only_the_tokenizer_decides_between_chat_and_completion() -> None:
    assert resolve_prompt_format(PromptFormat.AUTO, True) is PromptFormat.CHAT
    assert resolve_prompt_format(PromptFormat.AUTO, False) is PromptFormat.COMPLETION
    assert resolve_prompt_format(PromptFormat.COMPLETION, True) is PromptFormat.COMPLETION
    with pytest.raises(
        ConfigError, match="PROMPT_FORMAT=chat but the model's tokenizer has no chat template"
    ):
        resolve_prompt_format(PromptFormat.CHAT, False)


def test_vllm_gets_the_precision_in_its_own_spelling() -> None:
    from cir_reasoner.model_loading import vllm_engine_args

    assert vllm_engine_args("org/llm", 512, dtype=Precision.FP16)["dtype"] == "float16"
    assert vllm_engine_args("org/llm", 512, dtype="bfloat16")["dtype"] == "bfloat16"
    assert vllm_engine_args("org/llm", 512)["dtype"] == "auto"
    with pytest.raises(
        ConfigError, match="unknown vLLM dtype 'pure_bf16'; use auto, float32, float16, bfloat16"
    ):
        vllm_engine_args("org/llm", 512, dtype=Precision.PURE_BF16)
