"""Captioner service settings (environment prefix CIR_CAPTIONER_, profile section [captioner])."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from cir_captioner.decoding import DecodingLimits, DecodingOverrides, ServerDecodingDefaults, resolve_decoding
from cir_common.config import ServiceSettings, choice, load_settings
from cir_common.errors import ConfigError, InvalidArgument, ResourceExhausted
from cir_common.vocabulary import CAPTIONER, DecodingVariant, Precision

ENV_PREFIX = CAPTIONER.env_prefix
SECTION = CAPTIONER.profile_section

# The precisions BLIP-2 runs in (open_clip's pure_* ones are the encoder's only).
_DTYPES = (Precision.AUTO, Precision.FP32, Precision.FP16, Precision.BF16)

# Settings that count something per request or per batch: zero or less would refuse every request.
_AT_LEAST_ONE = (
    "max_images_per_request",
    "max_num_captions",
    "max_new_tokens",
    "max_num_beams",
    "batch_max_images",
)


@dataclasses.dataclass
class CaptionerSettings(ServiceSettings):
    env_prefix: ClassVar[str] = ENV_PREFIX
    port: int = CAPTIONER.default_port
    # Hub id or local folder written by save_pretrained.
    model: str = "Salesforce/blip2-opt-6.7b-coco"
    device: str = "auto"
    # "auto" = fp16 on cuda, fp32 on cpu; or fp32 / fp16 / bf16 (also read as float32 / float16 / bfloat16).
    dtype: Precision = choice(Precision.AUTO, _DTYPES, "pure_* are open_clip's, the encoder's only")
    # "beam_sample" (CVSI released code) or "nucleus" (LDRE).
    default_variant: DecodingVariant = DecodingVariant.BEAM_SAMPLE
    default_num_captions: int = 15
    default_prompt: str = "a photo of"
    max_images_per_request: int = 64
    max_num_captions: int = 64
    max_new_tokens: int = 100
    # Beams cost memory like captions do; beam_sample's published setting is 15.
    max_num_beams: int = 64
    max_prompt_chars: int = 256
    batch_max_images: int = 16
    batch_window_ms: float = 10.0
    # Benchmark only (bench/gpu_paper_profile.py): every caption is exactly this many tokens (no EOS before),
    # whatever the request asks. Random-weight models never stop on their own; this gives them the length of
    # a real caption. 0 = off.
    benchmark_caption_tokens: int = 0

    def validate(self) -> None:
        super().validate()
        self.require_at_least(1, *_AT_LEAST_ONE, "default_num_captions")
        self.require_at_least(0, "batch_window_ms")
        if not 0 <= self.benchmark_caption_tokens <= self.max_new_tokens:
            raise ConfigError(
                f"{ENV_PREFIX}BENCHMARK_CAPTION_TOKENS must be 0 (off) or at most {ENV_PREFIX}MAX_NEW_TOKENS "
                f"({self.max_new_tokens}), got {self.benchmark_caption_tokens}"
            )
        # The server's default decoding, checked against its own limits: a bad default stops the process at
        # start, not the first request.
        try:
            resolve_decoding(DecodingOverrides(), 0, self.decoding_defaults(), self.decoding_limits())
        except (InvalidArgument, ResourceExhausted) as error:
            raise ConfigError(
                f"the default decoding does not fit this server's settings: {error.message}"
            ) from None

    def decoding_defaults(self) -> ServerDecodingDefaults:
        return ServerDecodingDefaults(
            variant=DecodingVariant(self.default_variant),
            num_captions=self.default_num_captions,
            prompt=self.default_prompt,
            fixed_caption_tokens=self.benchmark_caption_tokens,
        )

    def decoding_limits(self) -> DecodingLimits:
        return DecodingLimits(
            max_num_captions=self.max_num_captions,
            max_new_tokens=self.max_new_tokens,
            max_num_beams=self.max_num_beams,
            max_prompt_chars=self.max_prompt_chars,
        )


def load_captioner_settings() -> CaptionerSettings:
    return load_settings(CaptionerSettings, section=SECTION, env_prefix=ENV_PREFIX)
