"""Captioner service settings (environment prefix CIR_CAPTIONER_, profile section [captioner])."""

from __future__ import annotations

import dataclasses

from cir_common.config import ServiceSettings, load_settings

ENV_PREFIX = "CIR_CAPTIONER_"
SECTION = "captioner"


@dataclasses.dataclass
class CaptionerSettings(ServiceSettings):
    port: int = 50052
    # Hub id or local folder written by save_pretrained.
    model: str = "Salesforce/blip2-opt-6.7b-coco"
    device: str = "auto"
    # "auto" = fp16 on cuda, fp32 on cpu.
    dtype: str = "auto"
    # "beam_sample" (CVSI released code) or "nucleus" (LDRE).
    default_variant: str = "beam_sample"
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


def load_captioner_settings() -> CaptionerSettings:
    return load_settings(CaptionerSettings, section=SECTION, env_prefix=ENV_PREFIX)
