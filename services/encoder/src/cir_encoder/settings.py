"""Encoder service settings (environment prefix CIR_ENCODER_, profile section [encoder])."""

from __future__ import annotations

import dataclasses

from cir_common.config import ServiceSettings, load_settings

ENV_PREFIX = "CIR_ENCODER_"
SECTION = "encoder"


@dataclasses.dataclass
class EncoderSettings(ServiceSettings):
    port: int = 50051
    # open_clip model name (e.g. ViT-L-14, ViT-bigG-14) or "local-dir:/path".
    clip_model: str = "ViT-L-14"
    # open_clip pretrained tag (e.g. openai, laion2b_s39b_b160k) or a local checkpoint path.
    clip_pretrained: str = "openai"
    # Folder of extra open_clip model config JSON files (custom architectures).
    clip_config_dir: str = ""
    # "auto" = cuda when present, else cpu.
    device: str = "auto"
    # "auto" = fp16 on cuda, fp32 on cpu; or fp32 / fp16 / bf16.
    precision: str = "auto"
    # Mapping networks by name (lincir, searle, pic2word, ...) -> checkpoint path.
    mapping_networks: dict[str, str] = dataclasses.field(default_factory=dict)
    default_mapping_network: str = "lincir"
    # "targetpad" (CVSI) or "model_default".
    preprocessing: str = "targetpad"
    target_pad_ratio: float = 1.25
    # Longest long:short side ratio accepted for images (INVALID_ARGUMENT past it).
    max_aspect_ratio: float = 20.0
    max_items_per_request: int = 256
    max_text_chars: int = 4096
    batch_max_size: int = 64
    batch_window_ms: float = 5.0


def load_encoder_settings() -> EncoderSettings:
    return load_settings(EncoderSettings, section=SECTION, env_prefix=ENV_PREFIX)
