"""Retriever service settings (environment prefix CIR_RETRIEVER_, profile section [retriever]).

`RetrieverSettings.validate` holds every check of them: a bad value is refused when the settings are built
(`load_settings`, or a test building them by hand), before anything starts.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import ClassVar

from cir_common.config import ServiceSettings, load_settings
from cir_common.errors import ConfigError
from cir_common.tls import TlsFiles
from cir_common.vocabulary import CAPTIONER, ENCODER, REASONER, RETRIEVER, DecodingVariant, Preprocessing
from cir_retriever.gallery.types import MAX_NUM_CAPTIONS
from cir_retriever.presets import Preset
from cir_retriever.strategies import StrategyName

ENV_PREFIX = RETRIEVER.env_prefix
SECTION = RETRIEVER.profile_section


class StoreBackend(StrEnum):
    """Where the gallery lives."""

    LOCAL = "local"  # SQLite + in-memory search, one replica
    MILVUS = "milvus"  # everything in Milvus: stateless replicas


@dataclasses.dataclass
class RetrieverSettings(ServiceSettings):
    env_prefix: ClassVar[str] = ENV_PREFIX
    port: int = RETRIEVER.default_port
    encoder_address: str = ENCODER.default_address
    captioner_address: str = CAPTIONER.default_address
    reasoner_address: str = REASONER.default_address
    # TLS to the three model services: the CA (PEM) that signed their certificates (set = TLS on), and this
    # retriever's client certificate and key for mTLS (both or neither). Re-read when the files change.
    downstream_tls_ca_file: str = ""
    downstream_tls_cert_file: str = ""
    downstream_tls_key_file: str = ""
    # API keys of the public API (TOML: [[keys]] name, sha256 of the key, role search / write / admin, an
    # optional rate limit); empty = no keys, every call allowed (development only).
    api_keys_file: str = ""
    # Gallery store: "local" (SQLite + in-memory search, one replica) or "milvus" (stateless replicas).
    store_backend: StoreBackend = StoreBackend.LOCAL
    # local backend: store root (one folder per collection).
    store_dir: str = "./data/collections"
    # milvus backend: the Milvus endpoint, and the NAME of the environment variable holding its token.
    milvus_uri: str = "http://127.0.0.1:19530"
    milvus_token_env: str = "MILVUS_TOKEN"
    default_strategy: StrategyName = StrategyName.CVSI
    default_preset: Preset = Preset.CIRCO
    # Settings of collections created without explicit ones (CreateCollection or first ingest).
    default_num_captions: int = 15
    default_decoding_variant: DecodingVariant = DecodingVariant.BEAM_SAMPLE
    default_preprocessing: Preprocessing = Preprocessing.TARGETPAD
    default_top_k: int = 10
    max_top_k: int = 1000
    # Longest modification_text a search accepts (characters); longer ones are refused at the public edge.
    max_text_chars: int = 2000
    # Time a search may take when the caller sets no deadline.
    default_timeout_s: float = 120.0
    # Non-essential stages past these budgets degrade (fallbacks) instead of failing the search.
    captioner_budget_s: float = 30.0
    reasoner_budget_s: float = 60.0
    # The instructcir strategy's query embedding (an encoder call): past it, or failed, the search ranks by
    # the reference image alone (image_only) and lists the degradation.
    instructcir_budget_s: float = 30.0
    # Shed work the deadline cannot cover, by each stage's recent durations in this process: a search whose
    # deadline is shorter than its strategy's essential stages fails with DEADLINE_EXCEEDED before any
    # model call; an essential stage (encoder, store search) that cannot fit fails it at once; a
    # non-essential one (captions, LLM edits / objects) is skipped with a listed degradation.
    shed_by_estimate: bool = True
    # A stage's estimate: this quantile of its last STAGE_ESTIMATE_WINDOW durations (0.5 = the median).
    stage_estimate_window: int = 32
    stage_estimate_quantile: float = 0.5
    # Searches that run a generative model at query time (captioner or LLM: every strategy but image_only,
    # text_only and textual inversion) at once, and waiting for a turn; past both, RESOURCE_EXHAUSTED with
    # a retry hint, and a search whose deadline the queue ahead outlasts is refused at once. Size it to
    # what the captioner and reasoner behind this replica finish within callers' deadlines: more only
    # stretches every search until all miss their deadlines (the CPU tiny profile sets 1).
    max_concurrent_generative_searches: int = 64
    max_queued_generative_searches: int = 128
    # Run query stages one after another instead of concurrently (for measuring what concurrency buys).
    sequential_stages: bool = False
    # Ingestion: images per pipeline batch, and batches in flight before the stream is paused.
    ingest_batch_size: int = 16
    ingest_max_batches_in_flight: int = 2

    def validate(self) -> None:
        super().validate()
        check_stage_estimates(self.stage_estimate_window, self.stage_estimate_quantile)
        if self.max_concurrent_generative_searches < 1 or self.max_queued_generative_searches < 0:
            raise ConfigError(
                f"{ENV_PREFIX}MAX_CONCURRENT_GENERATIVE_SEARCHES={self.max_concurrent_generative_searches}"
                f" and {ENV_PREFIX}MAX_QUEUED_GENERATIVE_SEARCHES={self.max_queued_generative_searches}: "
                "need at least 1 running and 0 or more queued"
            )
        if not 1 <= self.default_num_captions <= MAX_NUM_CAPTIONS:
            raise ConfigError(
                f"{ENV_PREFIX}DEFAULT_NUM_CAPTIONS={self.default_num_captions} is outside "
                f"1..{MAX_NUM_CAPTIONS}"
            )
        if not 1 <= self.default_top_k <= self.max_top_k:
            raise ConfigError(
                f"{ENV_PREFIX}DEFAULT_TOP_K={self.default_top_k} must be at least 1 and at most "
                f"{ENV_PREFIX}MAX_TOP_K={self.max_top_k}"
            )
        self.require_at_least(1, "max_text_chars", "ingest_batch_size", "ingest_max_batches_in_flight")
        self.require_positive(
            "default_timeout_s", "captioner_budget_s", "reasoner_budget_s", "instructcir_budget_s"
        )
        cert, key, ca = self._downstream_tls_variables()
        if bool(self.downstream_tls_cert_file) != bool(self.downstream_tls_key_file):
            raise ConfigError(f"{cert} and {key} go together: set both (mTLS) or neither")
        if self.downstream_tls_cert_file and not self.downstream_tls_ca_file:
            raise ConfigError(
                f"{cert} (mTLS) needs TLS: set {ca} to the CA that signed the model services' certificates"
            )

    def downstream_tls(self) -> TlsFiles | None:
        """The TLS files of the channels to the model services, or None for plaintext."""
        if not self.downstream_tls_ca_file:
            return None
        return TlsFiles(
            self.downstream_tls_cert_file,
            self.downstream_tls_key_file,
            self.downstream_tls_ca_file,
            self._downstream_tls_variables(),
        )

    def _downstream_tls_variables(self) -> tuple[str, str, str]:
        return (
            self.variable("downstream_tls_cert_file"),
            self.variable("downstream_tls_key_file"),
            self.variable("downstream_tls_ca_file"),
        )


def check_stage_estimates(window: int, quantile: float) -> None:
    """The stage estimates' settings (`latency.StageEstimates` checks its arguments with this too)."""
    if window < 1:
        raise ConfigError(f"{ENV_PREFIX}STAGE_ESTIMATE_WINDOW must be at least 1, got {window}")
    if not 0.0 <= quantile <= 1.0:
        raise ConfigError(f"{ENV_PREFIX}STAGE_ESTIMATE_QUANTILE must be within 0..1, got {quantile}")


def load_retriever_settings() -> RetrieverSettings:
    return load_settings(RetrieverSettings, section=SECTION, env_prefix=ENV_PREFIX)
