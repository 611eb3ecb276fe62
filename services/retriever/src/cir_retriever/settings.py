"""Retriever service settings (environment prefix CIR_RETRIEVER_, profile section [retriever])."""

from __future__ import annotations

import dataclasses

from cir_common.config import ServiceSettings, load_settings

ENV_PREFIX = "CIR_RETRIEVER_"
SECTION = "retriever"


@dataclasses.dataclass
class RetrieverSettings(ServiceSettings):
    port: int = 50050
    encoder_address: str = "127.0.0.1:50051"
    captioner_address: str = "127.0.0.1:50052"
    reasoner_address: str = "127.0.0.1:50053"
    # Gallery store root (one folder per collection).
    store_dir: str = "./data/collections"
    default_strategy: str = "cvsi"
    default_preset: str = "circo"
    default_top_k: int = 10
    max_top_k: int = 1000


def load_retriever_settings() -> RetrieverSettings:
    return load_settings(RetrieverSettings, section=SECTION, env_prefix=ENV_PREFIX)
