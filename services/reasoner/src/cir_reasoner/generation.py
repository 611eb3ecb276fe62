"""The one small interface every LLM backend implements, and what travels through it.

The service prepares each prompt once (`prepare`: chat template applied, tokens counted against the
prompt budget), then hands all the prompts of a request to `generate` together; a backend returns one
`Completion` per prompt, in order, with `text` None where that prompt failed. Backends never raise for a
failed prompt, so one bad generation cannot take the others of its request down with it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cir_common.errors import ConfigError
from cir_reasoner.settings import ENV_PREFIX, PromptFormat

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# The papers' LLM settings (method.md 3.5): greedy, 700 tokens, stop on a blank line.
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TOP_P = 1.0
DEFAULT_STOP = ("\n\n",)

# Without a tokenizer (openai backend) prompt sizes are estimated: English runs ~4 characters a token
# with real LLM tokenizers; 3 over-counts, so the budget errs towards dropping a caption, not overflowing.
_CHARS_PER_TOKEN_ESTIMATE = 3


@dataclass(frozen=True)
class Sampling:
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int = 700
    stop: tuple[str, ...] = DEFAULT_STOP
    top_p: float = DEFAULT_TOP_P
    seed: int | None = None
    # Benchmarks only (ReasonerSettings.benchmark_*_tokens, vllm backend): no EOS and no stop string ends an
    # answer before this many tokens. 0 = off.
    min_tokens: int = 0

    @property
    def deterministic(self) -> bool:
        """Greedy or seeded: the same prompt gives the same answer, so the answer may be cached."""
        return self.temperature == 0.0 or self.seed is not None

    def cache_params(self) -> dict[str, object]:
        params: dict[str, object] = {
            "temperature": round(self.temperature, 6),
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "top_p": round(self.top_p, 6),
            "seed": self.seed,
        }
        if self.min_tokens:
            params["min_tokens"] = self.min_tokens
        return params


@dataclass(frozen=True)
class PreparedPrompt:
    """A prompt as the backend will send it: the template text, and its tokens where a tokenizer is known."""

    text: str
    token_count: int
    token_ids: tuple[int, ...] | None = None
    # False when token_count is an estimate (no tokenizer).
    exact: bool = True


@dataclass(frozen=True)
class Completion:
    text: str | None
    error: str = ""
    finish_reason: str = ""
    # Tokens the model generated, as the backend counted them (0 when unknown).
    generated_tokens: int = 0


@dataclass(frozen=True)
class EngineCounters:
    in_flight: int
    aborted: int
    # From the engine's scheduler, where it reports them (vLLM): requests running and waiting at its last
    # step, and prompt tokens looked up in / found in its prefix cache so far.
    running: int | None = None
    waiting: int | None = None
    prefix_cache_queries: int | None = None
    prefix_cache_hits: int | None = None


@dataclass(frozen=True)
class BackendModel:
    """What produced the answers: shown to callers and hashed into cache keys."""

    name: str
    revision: str
    family: str
    details: dict[str, str] = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return f"{self.family}:{self.name}@{self.revision or 'unknown-revision'}"


class LLMBackend(Protocol):
    name: str
    prompt_format: PromptFormat  # CHAT or COMPLETION, as resolved when the backend loaded
    model: BackendModel
    # Positions the model can attend to, where known (prompt + answer must fit).
    max_context: int | None

    def prepare(self, prompt: str) -> PreparedPrompt:
        """Render and count one prompt: CPU work, called from a worker thread (thread-safe)."""
        ...

    async def generate(
        self, prompts: Sequence[PreparedPrompt], sampling: Sampling, deadline: float | None
    ) -> list[Completion]:
        """One completion per prompt, all in flight together; `deadline` is a time.monotonic() value."""
        ...

    def engine_counters(self) -> EngineCounters | None:
        """Generations running now and aborted so far, where the backend can tell (None elsewhere)."""
        ...

    async def close(self) -> None: ...


def seconds_left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def deadline_error() -> str:
    return "no answer before the caller's deadline (generation aborted)"


def resolve_prompt_format(setting: PromptFormat, has_chat_template: bool) -> PromptFormat:
    """`auto` = chat when the tokenizer has a chat template (instruction-tuned models), else completion.

    The settings refuse a format outside PromptFormat; whether chat suits the tokenizer is decided here.
    """
    if setting == PromptFormat.AUTO:
        return PromptFormat.CHAT if has_chat_template else PromptFormat.COMPLETION
    if setting == PromptFormat.CHAT and not has_chat_template:
        raise ConfigError(
            f"{ENV_PREFIX}PROMPT_FORMAT=chat but the model's tokenizer has no chat template; "
            "use completion (base models) or a model folder that ships a chat template"
        )
    return PromptFormat(setting)


class PromptEncoder:
    """Renders a prompt the way the model expects it and tokenizes it once.

    Callable from any thread (the service calls it from a worker thread, never from its event loop), one
    call at a time: a fast tokenizer's Rust side keeps its padding / truncation settings as mutable state
    that `__call__` may reset, and a reset while another thread encodes fails with "Already borrowed".
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_format: PromptFormat) -> None:
        self.tokenizer = tokenizer
        self.prompt_format = prompt_format
        self._lock = threading.Lock()

    def encode(self, prompt: str) -> list[int]:
        with self._lock:
            return self._encode(prompt)

    def _encode(self, prompt: str) -> list[int]:
        if self.prompt_format == PromptFormat.CHAT:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            # The chat template writes the BOS token itself; letting the tokenizer add one would double it.
            return list(self.tokenizer(str(rendered), add_special_tokens=False).input_ids)
        return list(self.tokenizer(prompt).input_ids)

    def prepare(self, prompt: str) -> PreparedPrompt:
        ids = self.encode(prompt)
        return PreparedPrompt(text=prompt, token_count=len(ids), token_ids=tuple(ids))


def estimate_prompt(prompt: str) -> PreparedPrompt:
    return PreparedPrompt(
        text=prompt, token_count=math.ceil(len(prompt) / _CHARS_PER_TOKEN_ESTIMATE), exact=False
    )
