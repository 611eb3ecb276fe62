"""Reasoner service settings (environment prefix CIR_REASONER_, profile section [reasoner]).

The settings check themselves when built (`ReasonerSettings.validate`): a value outside a closed set of
choices, a limit below 1 or an openai backend without its endpoint is refused before anything starts.
What only the model can decide (a chat prompt format for a tokenizer without a chat template, an output
budget that leaves no room in the model's context, a default template the template files lack) is checked
where the model or the templates are loaded.
"""

from __future__ import annotations

import dataclasses
from enum import StrEnum
from typing import ClassVar

from cir_common.config import ServiceSettings, choice, load_settings
from cir_common.errors import ConfigError
from cir_common.vocabulary import REASONER, Precision
from cir_reasoner.templates import DIFFERENCE_TEMPLATE

ENV_PREFIX = REASONER.env_prefix
SECTION = REASONER.profile_section


class Backend(StrEnum):
    """Where the LLM runs."""

    VLLM = "vllm"  # vLLM's async engine, in process
    OPENAI = "openai"  # any OpenAI-compatible endpoint
    TRANSFORMERS = "transformers"  # plain transformers generation, for small models


class PromptFormat(StrEnum):
    """How a prompt reaches the model; a backend resolves AUTO to one of the other two when it loads."""

    AUTO = "auto"  # chat when the tokenizer has a chat template (openai backend: chat)
    CHAT = "chat"  # the prompt as the user message of the model's chat template
    COMPLETION = "completion"  # the prompt as it is (base models)


# The precisions an LLM backend runs in (open_clip's pure_* ones are the encoder's only).
_DTYPES = (Precision.AUTO, Precision.FP32, Precision.FP16, Precision.BF16)

# Limits of a request: a value below 1 would refuse every request.
_AT_LEAST_ONE = (
    "max_captions_per_request",
    "max_pairs_per_request",
    "max_text_chars",
    "max_prompt_tokens",
    "max_output_tokens",
)
# Fixed answer lengths for benchmarks with random weights (0 = off).
_BENCHMARK_LENGTHS = ("benchmark_edit_tokens", "benchmark_objects_tokens")


@dataclasses.dataclass
class ReasonerSettings(ServiceSettings):
    env_prefix: ClassVar[str] = ENV_PREFIX
    port: int = REASONER.default_port
    backend: Backend = Backend.VLLM
    # Hub id or local folder of the LLM (vllm and transformers backends).
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.85
    device: str = "auto"
    # "auto" (vLLM: the checkpoint's; transformers: fp16 on CUDA, fp32 elsewhere) or fp32 / fp16 / bf16.
    dtype: Precision = choice(Precision.AUTO, _DTYPES, "pure_* are open_clip's, the encoder's only")
    # vLLM: run eagerly (no CUDA graphs / torch.compile): starts much faster, generates somewhat slower.
    enforce_eager: bool = False
    prompt_format: PromptFormat = PromptFormat.AUTO
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
    # DescribeDifferences (InstructCIR triplets): the template of a request that names none.
    default_difference_template: str = DIFFERENCE_TEMPLATE
    max_captions_per_request: int = 64
    # Caption pairs per DescribeDifferences request: one prompt each, generated together.
    max_pairs_per_request: int = 64
    # Characters per caption, instruction and stop string, checked before anything is tokenized: the
    # limit that keeps one request from holding the CPU for seconds (the prompt budget needs tokens, so
    # it cannot stop a megabyte of text on its own). Above the retriever's own text limit and far above
    # any caption a captioner writes.
    max_text_chars: int = 4096
    max_prompt_tokens: int = 6144
    max_output_tokens: int = 700
    # Benchmark only (bench/gpu_paper_profile.py), vllm backend: every edited caption / objects answer is
    # exactly this many tokens, EOS and stop strings ignored. Random-weight models never stop on their own;
    # this gives them the length of typical real answers. 0 = off.
    benchmark_edit_tokens: int = 0
    benchmark_objects_tokens: int = 0

    def validate(self) -> None:
        super().validate()
        self.require_at_least(1, *_AT_LEAST_ONE)
        for name in _BENCHMARK_LENGTHS:
            if not 0 <= getattr(self, name) <= self.max_output_tokens:
                raise ConfigError(
                    f"{ENV_PREFIX}{name.upper()} must be 0 (off) or at most {ENV_PREFIX}MAX_OUTPUT_TOKENS "
                    f"({self.max_output_tokens}), got {getattr(self, name)}"
                )
            if getattr(self, name) and self.backend != Backend.VLLM:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} is for benchmarks on the vllm backend only")
        if self.openai_max_concurrency < 1 or self.openai_max_retries < 0:
            raise ConfigError(
                f"{ENV_PREFIX}OPENAI_MAX_CONCURRENCY must be >= 1 and {ENV_PREFIX}OPENAI_MAX_RETRIES >= 0"
            )
        if self.backend == Backend.OPENAI and not (self.openai_base_url and self.openai_model):
            raise ConfigError(
                f"the openai backend needs {ENV_PREFIX}OPENAI_BASE_URL (e.g. http://127.0.0.1:8000/v1) and "
                f"{ENV_PREFIX}OPENAI_MODEL (the model name the endpoint serves)"
            )


def load_reasoner_settings() -> ReasonerSettings:
    return load_settings(ReasonerSettings, section=SECTION, env_prefix=ENV_PREFIX)
