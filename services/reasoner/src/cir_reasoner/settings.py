"""Reasoner service settings (environment prefix CIR_REASONER_, profile section [reasoner])."""

from __future__ import annotations

import dataclasses

from cir_common.config import ServiceSettings, load_settings

ENV_PREFIX = "CIR_REASONER_"
SECTION = "reasoner"


@dataclasses.dataclass
class ReasonerSettings(ServiceSettings):
    port: int = 50053
    # "vllm" (in-process engine), "openai" (any OpenAI-compatible endpoint) or "transformers".
    backend: str = "vllm"
    # Hub id or local folder of the LLM (vllm and transformers backends).
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.85
    device: str = "auto"
    dtype: str = "auto"
    # vLLM: run eagerly (no CUDA graphs / torch.compile): starts much faster, generates somewhat slower.
    enforce_eager: bool = False
    # "auto" = chat when the tokenizer has a chat template (openai backend: chat), "chat" or "completion".
    prompt_format: str = "auto"
    # Tokenizer folder used to count prompt tokens on the openai backend; empty = estimate from characters.
    tokenizer: str = ""
    # openai backend: base URL, model name, and the NAME of the environment variable holding the key.
    openai_base_url: str = ""
    openai_model: str = ""
    openai_api_key_env: str = "OPENAI_API_KEY"
    openai_max_concurrency: int = 32
    # openai backend: retries of one prompt on 429 / 5xx / connection errors (backoff, within the deadline).
    openai_max_retries: int = 4
    # openai backend: longest wait for one HTTP answer when the caller set no deadline.
    openai_timeout_s: float = 120.0
    # Extra prompt template files or folders, added to the built-in templates.
    template_paths: list[str] = dataclasses.field(default_factory=list)
    default_edit_template: str = "edit_structural"
    max_captions_per_request: int = 64
    # Characters per caption, instruction and stop string, checked before anything is tokenized: the
    # limit that keeps one request from holding the CPU for seconds (the prompt budget needs tokens, so
    # it cannot stop a megabyte of text on its own). Above the retriever's own text limit and far above
    # any caption a captioner writes.
    max_text_chars: int = 4096
    max_prompt_tokens: int = 6144
    max_output_tokens: int = 700


def load_reasoner_settings() -> ReasonerSettings:
    return load_settings(ReasonerSettings, section=SECTION, env_prefix=ENV_PREFIX)
