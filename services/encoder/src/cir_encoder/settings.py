"""Encoder service settings (environment prefix CIR_ENCODER_, profile section [encoder])."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from cir_common.config import ServiceSettings, load_settings
from cir_common.errors import ConfigError
from cir_common.vocabulary import ENCODER, Precision, Preprocessing

ENV_PREFIX = ENCODER.env_prefix
SECTION = ENCODER.profile_section


@dataclasses.dataclass
class EncoderSettings(ServiceSettings):
    env_prefix: ClassVar[str] = ENV_PREFIX
    port: int = ENCODER.default_port
    # open_clip model name (e.g. ViT-L-14, ViT-bigG-14) or "local-dir:/path".
    clip_model: str = "ViT-L-14"
    # open_clip pretrained tag (e.g. openai, laion2b_s39b_b160k) or a local checkpoint path.
    clip_pretrained: str = "openai"
    # Folder of extra open_clip model config JSON files (custom architectures).
    clip_config_dir: str = ""
    # "auto" = cuda when present, else cpu.
    device: str = "auto"
    # "auto" = fp16 on cuda, fp32 on cpu; or fp32 / fp16 / bf16, or open_clip's pure_fp16 / pure_bf16.
    precision: Precision = Precision.AUTO
    # Mapping networks by name (lincir, searle, pic2word, ...) -> checkpoint path.
    mapping_networks: dict[str, str] = dataclasses.field(default_factory=dict)
    default_mapping_network: str = "lincir"
    # InstructCIR checkpoint (method.md 4.2) trained on this CLIP; empty = no InstructCIR RPCs.
    instructcir_checkpoint: str = ""
    # "targetpad" (CVSI) or "model_default".
    preprocessing: Preprocessing = Preprocessing.TARGETPAD
    target_pad_ratio: float = 1.25
    # Longest long:short side ratio accepted for images (INVALID_ARGUMENT past it).
    max_aspect_ratio: float = 20.0
    max_items_per_request: int = 256
    max_text_chars: int = 4096
    batch_max_size: int = 64
    batch_window_ms: float = 5.0

    def validate(self) -> None:
        super().validate()
        self.require_at_least(1, "max_items_per_request", "max_text_chars", "batch_max_size")
        self.require_at_least(0, "batch_window_ms")
        if not self.target_pad_ratio > 0:
            raise ConfigError(
                f"{ENV_PREFIX}TARGET_PAD_RATIO={self.target_pad_ratio} must be positive (CVSI's is 1.25)"
            )
        if not self.max_aspect_ratio >= 1:
            raise ConfigError(
                f"{ENV_PREFIX}MAX_ASPECT_RATIO={self.max_aspect_ratio} must be at least 1 (long:short side); "
                "below it no image, not even a square one, is accepted"
            )
        if self.mapping_networks and self.default_mapping_network not in self.mapping_networks:
            raise ConfigError(
                f"default_mapping_network {self.default_mapping_network!r} is not among the configured "
                f"mapping networks ({', '.join(sorted(self.mapping_networks))})"
            )


def load_encoder_settings() -> EncoderSettings:
    return load_settings(EncoderSettings, section=SECTION, env_prefix=ENV_PREFIX)
