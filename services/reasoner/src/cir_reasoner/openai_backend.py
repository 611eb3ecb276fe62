"""The openai backend: any OpenAI-compatible endpoint (a vLLM server, a hosted model) over httpx.

Every prompt of a call is sent concurrently, at most `openai_max_concurrency` requests in flight per
backend. 429, 5xx and connection failures are retried with exponential backoff (honouring Retry-After)
for as long as the caller's deadline allows; other 4xx answers fail the prompt at once, since sending the
same request again cannot help. Chat models get `/chat/completions`, base models `/completions`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import httpx

from cir_common.errors import ConfigError
from cir_reasoner.generation import (
    BackendModel,
    Completion,
    EngineCounters,
    PreparedPrompt,
    PromptEncoder,
    Sampling,
    deadline_error,
    estimate_prompt,
    seconds_left,
)
from cir_reasoner.settings import ENV_PREFIX, Backend, PromptFormat, ReasonerSettings

log = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_BACKOFF_BASE_S = 0.25
_BACKOFF_MAX_S = 8.0
_ERROR_BODY_CHARS = 300


class OpenAIBackend:
    name = Backend.OPENAI

    def __init__(
        self,
        *,
        base_url: str,
        model_name: str,
        api_key: str | None,
        prompt_format: PromptFormat,
        max_concurrency: int,
        max_retries: int,
        timeout_s: float,
        encoder: PromptEncoder | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.prompt_format = prompt_format
        self.encoder = encoder
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.max_context: int | None = None
        self.model = BackendModel(
            name=model_name, revision="", family="openai-compatible", details={"base_url": self.base_url}
        )
        self._model_name = model_name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            transport=transport,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
        )
        self._slots = asyncio.Semaphore(max_concurrency)

    @classmethod
    async def start(
        cls, settings: ReasonerSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> OpenAIBackend:
        # The settings checked the endpoint's URL and model name, the limits and the prompt format.
        is_completion = settings.prompt_format == PromptFormat.COMPLETION
        prompt_format = PromptFormat.COMPLETION if is_completion else PromptFormat.CHAT
        api_key = os.environ.get(settings.openai_api_key_env) or None
        if api_key is None:
            log.info(
                "no API key in $%s: calling %s without one",
                settings.openai_api_key_env,
                settings.openai_base_url,
            )
        backend = cls(
            base_url=settings.openai_base_url,
            model_name=settings.openai_model,
            api_key=api_key,
            prompt_format=prompt_format,
            max_concurrency=settings.openai_max_concurrency,
            max_retries=settings.openai_max_retries,
            timeout_s=settings.openai_timeout_s,
            encoder=_counting_encoder(settings.tokenizer, prompt_format),
            transport=transport,
        )
        await backend.check_endpoint()
        return backend

    async def check_endpoint(self) -> None:
        """A model the endpoint does not serve, or a refused key, is a configuration error; an endpoint
        that is down is not (it may come up later, and the service answers with fallbacks meanwhile)."""
        try:
            response = await self._client.get(f"{self.base_url}/models", timeout=10.0)
        except httpx.HTTPError as error:
            log.warning("OpenAI-compatible endpoint %s not reachable yet: %s", self.base_url, error)
            return
        if response.status_code in (401, 403):
            raise ConfigError(
                f"{self.base_url} refused the API key ({response.status_code}); set the key in the "
                f"environment variable named by {ENV_PREFIX}OPENAI_API_KEY_ENV"
            )
        if response.status_code != 200:
            log.warning(
                "%s/models answered %d; not checking the model name", self.base_url, response.status_code
            )
            return
        entries = {
            str(entry.get("id")): entry
            for entry in response.json().get("data", [])
            if isinstance(entry, dict)
        }
        if entries and self._model_name not in entries:
            raise ConfigError(
                f"{self.base_url} does not serve model {self._model_name!r}; it serves: "
                f"{', '.join(sorted(entries))} ({ENV_PREFIX}OPENAI_MODEL)"
            )
        context = entries.get(self._model_name, {}).get("max_model_len")
        if isinstance(context, int):
            self.max_context = context  # vLLM servers report it; hosted APIs do not

    def prepare(self, prompt: str) -> PreparedPrompt:
        if self.encoder is None:
            return estimate_prompt(prompt)
        counted = self.encoder.prepare(prompt)
        return PreparedPrompt(text=prompt, token_count=counted.token_count)

    async def generate(
        self, prompts: Sequence[PreparedPrompt], sampling: Sampling, deadline: float | None
    ) -> list[Completion]:
        return list(await asyncio.gather(*(self._complete(p.text, sampling, deadline) for p in prompts)))

    def _payload(self, text: str, sampling: Sampling) -> tuple[str, dict[str, Any]]:
        payload: dict[str, Any] = {
            "model": self._model_name,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "n": 1,
        }
        if sampling.stop:
            payload["stop"] = list(sampling.stop)
        if sampling.seed is not None:
            payload["seed"] = sampling.seed
        if self.prompt_format == PromptFormat.CHAT:
            payload["messages"] = [{"role": "user", "content": text}]
            return f"{self.base_url}/chat/completions", payload
        payload["prompt"] = text
        return f"{self.base_url}/completions", payload

    async def _complete(self, text: str, sampling: Sampling, deadline: float | None) -> Completion:
        url, payload = self._payload(text, sampling)
        last_error = ""
        for attempt in range(self.max_retries + 1):
            left = seconds_left(deadline)
            if left is not None and left <= 0:
                return Completion(text=None, error=_with_last(deadline_error(), last_error))
            try:
                timeout = self.timeout_s if left is None else min(left, self.timeout_s)
                async with self._slots:
                    response = await self._client.post(url, json=payload, timeout=timeout)
            except httpx.TimeoutException:
                if deadline is not None and time.monotonic() >= deadline:
                    return Completion(text=None, error=_with_last(deadline_error(), last_error))
                last_error = f"no answer from {url} within {self.timeout_s:g} s"
                retry_after = None
            except httpx.TransportError as error:
                last_error = f"{type(error).__name__} calling {url}: {error}"
                retry_after = None
            else:
                if response.status_code == 200:
                    return _parse_choice(response, self.prompt_format)
                last_error = f"HTTP {response.status_code} from {url}: {response.text[:_ERROR_BODY_CHARS]}"
                if response.status_code not in _RETRY_STATUSES:
                    return Completion(text=None, error=last_error)
                retry_after = _retry_after_s(response)
            if attempt == self.max_retries:
                break
            delay = _backoff_s(attempt, retry_after)
            left = seconds_left(deadline)
            if left is not None and delay >= left:
                return Completion(
                    text=None, error=f"{last_error} (not retried: the next try would pass the deadline)"
                )
            log.info("retrying in %.2f s after: %s", delay, last_error)
            await asyncio.sleep(delay)
        return Completion(text=None, error=f"{last_error} (gave up after {self.max_retries + 1} tries)")

    def engine_counters(self) -> EngineCounters | None:
        return None  # the endpoint's scheduler is not visible from here

    async def close(self) -> None:
        await self._client.aclose()


def _counting_encoder(tokenizer_path: str, prompt_format: PromptFormat) -> PromptEncoder | None:
    if not tokenizer_path:
        return None
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot load {ENV_PREFIX}TOKENIZER {tokenizer_path!r}: {error}") from error
    has_chat_template = bool(getattr(tokenizer, "chat_template", None))
    chat = prompt_format == PromptFormat.CHAT and has_chat_template
    return PromptEncoder(tokenizer, PromptFormat.CHAT if chat else PromptFormat.COMPLETION)


def _parse_choice(response: httpx.Response, prompt_format: PromptFormat) -> Completion:
    try:
        body = response.json()
        choice = body["choices"][0]
        text = choice["message"]["content"] if prompt_format == PromptFormat.CHAT else choice["text"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        return Completion(text=None, error=f"unexpected answer shape from the endpoint: {error!r}")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Completion(
        text=text or "",
        finish_reason=str(choice.get("finish_reason") or ""),
        generated_tokens=int(usage.get("completion_tokens") or 0),
    )


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare for APIs; the exponential backoff applies instead


def _backoff_s(attempt: int, retry_after: float | None) -> float:
    # Full jitter keeps many callers that failed together from retrying in lockstep.
    delay = random.uniform(0.5, 1.0) * min(_BACKOFF_MAX_S, _BACKOFF_BASE_S * 2**attempt)
    return max(delay, retry_after) if retry_after is not None else delay


def _with_last(message: str, last_error: str) -> str:
    return f"{message}; last error: {last_error}" if last_error else message
