"""The transformers backend: plain local generation for small models, all prompts of a call in one batch.

Generation runs on a worker thread so the event loop keeps serving; one call at a time holds the model
(two batches side by side would only fight over the same cores). The thread cannot be cancelled from
outside, so a stopping criterion checks a flag set on cancellation and the caller's deadline at every
token: an abandoned batch stops within one decoding step instead of running to max_tokens.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria

from cir_reasoner.generation import (
    BackendModel,
    Completion,
    EngineCounters,
    PreparedPrompt,
    PromptEncoder,
    Sampling,
    deadline_error,
    resolve_prompt_format,
)
from cir_reasoner.model_identity import describe_model
from cir_reasoner.model_loading import LoadedCausalLM, load_causal_lm
from cir_reasoner.settings import Backend, PromptFormat, ReasonerSettings

log = logging.getLogger(__name__)


class TransformersBackend:
    name = Backend.TRANSFORMERS

    def __init__(self, lm: LoadedCausalLM, prompt_format: PromptFormat, model: BackendModel) -> None:
        self.lm = lm
        # A private copy for prompts: the service encodes on its worker thread while a batch decodes (and
        # pads, and matches stop strings) with lm.tokenizer on the generation thread; separate Rust
        # tokenizers never contend for one borrow.
        self.encoder = PromptEncoder(copy.deepcopy(lm.tokenizer), prompt_format)
        self.prompt_format = prompt_format
        self.model = model
        self.max_context = lm.max_context
        self._lock = asyncio.Lock()
        # Calls of `generate` that reached the model (a cache hit never does).
        self.batches = 0

    @classmethod
    def start(cls, settings: ReasonerSettings) -> TransformersBackend:
        lm = load_causal_lm(settings.model, settings.device, settings.dtype)
        prompt_format = resolve_prompt_format(settings.prompt_format, lm.has_chat_template)
        model = describe_model(settings.model, Backend.TRANSFORMERS, lm.weights_sha256)
        model.details.update(device=lm.device, dtype=str(lm.dtype).removeprefix("torch."))
        log.info("transformers LLM loaded: %s on %s (%s prompts)", model.identity, lm.device, prompt_format)
        return cls(lm, prompt_format, model)

    def prepare(self, prompt: str) -> PreparedPrompt:
        return self.encoder.prepare(prompt)

    async def generate(
        self, prompts: Sequence[PreparedPrompt], sampling: Sampling, deadline: float | None
    ) -> list[Completion]:
        if not prompts:
            return []
        stop = threading.Event()
        async with self._lock:
            self.batches += 1
            work = asyncio.ensure_future(asyncio.to_thread(self._generate, prompts, sampling, stop, deadline))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                stop.set()
                # Keep the lock until the thread let go of the model; the next batch would only wait for it.
                await asyncio.wait({work})
                raise

    def engine_counters(self) -> EngineCounters | None:
        return None  # generate() runs to completion: nothing is tracked or aborted

    async def close(self) -> None:
        # Waits for a batch still on the worker thread; the weights go with the last reference.
        async with self._lock:
            pass

    def _generate(
        self,
        prompts: Sequence[PreparedPrompt],
        sampling: Sampling,
        stop: threading.Event,
        deadline: float | None,
    ) -> list[Completion]:
        tokenizer = self.lm.tokenizer
        rows = [list(p.token_ids or ()) for p in prompts]
        batch = tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
        batch = {key: value.to(self.lm.device) for key, value in batch.items()}
        interrupted = _Interrupt(stop, deadline)
        options: dict[str, Any] = {
            "max_new_tokens": sampling.max_tokens,
            "pad_token_id": tokenizer.pad_token_id,
            "stopping_criteria": [interrupted],
        }
        if sampling.stop:
            options.update(stop_strings=list(sampling.stop), tokenizer=tokenizer)
        if sampling.temperature > 0:
            options.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        else:
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        try:
            with torch.inference_mode():
                output = self.lm.model.generate(**batch, **options)
        except (RuntimeError, ValueError) as error:
            log.exception("transformers generation failed")
            return [Completion(text=None, error=f"generation failed: {error}")] * len(prompts)
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return [_decode(tokenizer, row.tolist(), sampling, interrupted.fired) for row in new_tokens]


def _decode(tokenizer: Any, ids: list[int], sampling: Sampling, interrupted: bool) -> Completion:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    ended_by_eos = eos is not None and eos in ids
    if ended_by_eos:
        ids = ids[: ids.index(eos)]
    elif pad is not None and pad != eos:
        ids = [i for i in ids if i != pad]
    text = tokenizer.decode(ids, skip_special_tokens=True)
    count = len(ids)
    cut = min((text.find(s) for s in sampling.stop if s in text), default=-1)
    if cut >= 0:
        return Completion(text=text[:cut], finish_reason="stop", generated_tokens=count)
    if ended_by_eos:
        return Completion(text=text, finish_reason="stop", generated_tokens=count)
    if count >= sampling.max_tokens:
        return Completion(text=text, finish_reason="length", generated_tokens=count)
    if interrupted:
        return Completion(text=None, error=deadline_error(), generated_tokens=count)
    return Completion(text=text, finish_reason="stop", generated_tokens=count)


class _Interrupt(StoppingCriteria):
    """Stops the whole batch when the call was cancelled or its deadline passed."""

    def __init__(self, stop: threading.Event, deadline: float | None) -> None:
        self.stop = stop
        self.deadline = deadline
        self.fired = False

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        if self.stop.is_set() or (self.deadline is not None and time.monotonic() >= self.deadline):
            self.fired = True
        return torch.full((input_ids.shape[0],), self.fired, dtype=torch.bool, device=input_ids.device)
