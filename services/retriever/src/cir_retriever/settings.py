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
    # Gallery store: "local" (SQLite + in-memory search, one replica) or "milvus" (stateless replicas).
    store_backend: str = "local"
    # local backend: store root (one folder per collection).
    store_dir: str = "./data/collections"
    # milvus backend: the Milvus endpoint, and the NAME of the environment variable holding its token.
    milvus_uri: str = "http://127.0.0.1:19530"
    milvus_token_env: str = "MILVUS_TOKEN"
    default_strategy: str = "cvsi"
    default_preset: str = "circo"
    # Settings of collections created without explicit ones (CreateCollection or first ingest).
    default_num_captions: int = 15
    default_decoding_variant: str = "beam_sample"
    default_preprocessing: str = "targetpad"
    default_top_k: int = 10
    max_top_k: int = 1000
    # Longest modification_text a search accepts (characters); longer ones are refused at the public edge.
    max_text_chars: int = 2000
    # Time a search may take when the caller sets no deadline.
    default_timeout_s: float = 120.0
    # Non-essential stages past these budgets degrade (fallbacks) instead of failing the search.
    captioner_budget_s: float = 30.0
    reasoner_budget_s: float = 60.0
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


def load_retriever_settings() -> RetrieverSettings:
    return load_settings(RetrieverSettings, section=SECTION, env_prefix=ENV_PREFIX)
