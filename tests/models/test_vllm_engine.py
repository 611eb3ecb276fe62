"""vLLM's CPU engine starts from the tiny LLM folder through `start_vllm_engine` and generates.

Slow: the engine core runs in spawned processes and takes ~40 s to start on 2 cores, so it is started once
for the module and shut down at the end.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

pytestmark = pytest.mark.slow

MAX_TOKENS = 8


@dataclass
class Running:
    engine: Any
    loop: asyncio.AbstractEventLoop


@pytest.fixture(scope="module")
def running(tiny_profile: dict[str, Any]) -> Iterator[Running]:
    from cir_reasoner.model_loading import start_vllm_engine  # a broken vLLM install fails here, never skips

    previous = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
    # 1 GiB of KV cache: vLLM's CPU default would reserve a large share of the machine's memory.
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    # One loop for the module: the engine's output handler task lives on the loop of its first request.
    loop = asyncio.new_event_loop()
    reasoner = tiny_profile["reasoner"]
    # Started as the tiny pack's profile says (eager included), like the reasoner service starts it. No
    # local variable holds the engine: this frame lives until teardown ends, after the gc.collect() there.
    options = {"enforce_eager": reasoner["enforce_eager"]}
    state = Running(start_vllm_engine(reasoner["model"], reasoner["max_model_len"], **options), loop)
    try:
        yield state
    finally:
        state.engine.shutdown()
        # Drop the last reference now: AsyncLLM.__del__ shuts down again, which fails at interpreter exit.
        state.engine = None
        gc.collect()
        _close_loop(loop)
        if previous is None:
            os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
        else:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = previous


def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
    # What asyncio.run does on exit; the engine's output handler task and executor threads otherwise
    # outlive the loop and keep the interpreter from exiting.
    pending = asyncio.all_tasks(loop)
    for task in pending:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.run_until_complete(loop.shutdown_default_executor())
    loop.close()


def _chat_ids(model_dir: str, content: str) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True
    )
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    assert ids[-2:] == [tokenizer.convert_tokens_to_ids("<|assistant|>"), *newline]
    return list(ids)


async def _generate(engine: Any, prompt_ids: list[int], **sampling: Any) -> Any:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind

    # FINAL_ONLY: with n > 1 the streamed (cumulative) outputs carry only the completions that changed.
    params = SamplingParams(max_tokens=MAX_TOKENS, output_kind=RequestOutputKind.FINAL_ONLY, **sampling)
    final = None
    async for output in engine.generate(TokensPrompt(prompt_token_ids=prompt_ids), params, str(uuid.uuid4())):
        final = output
    assert final is not None and final.finished
    return final


def test_engine_uses_the_profile_context(running: Running, tiny_profile: dict[str, Any]) -> None:
    assert running.engine.vllm_config.model_config.max_model_len == tiny_profile["reasoner"]["max_model_len"]


def test_the_tiny_profile_starts_the_cpu_engine_eager(running: Running, tiny_profile: dict[str, Any]) -> None:
    """Not compiled: torch.compile on CPU took the engine over 300 s to start on a loaded 2-core machine."""
    from vllm.config.compilation import CompilationMode, CUDAGraphMode

    assert tiny_profile["reasoner"]["enforce_eager"] is True
    config = running.engine.vllm_config
    assert config.model_config.enforce_eager
    assert config.compilation_config.mode == CompilationMode.NONE
    assert config.compilation_config.cudagraph_mode == CUDAGraphMode.NONE


def test_generates_a_few_tokens_from_a_chat_prompt(running: Running, tiny_profile: dict[str, Any]) -> None:
    engine, loop = running.engine, running.loop
    content = "Image Content: a dog on a beach\nInstruction: make it red"
    prompt_ids = _chat_ids(tiny_profile["reasoner"]["model"], content)
    result = loop.run_until_complete(_generate(engine, prompt_ids, temperature=0.0, ignore_eos=True))
    assert list(result.prompt_token_ids) == prompt_ids
    completion = result.outputs[0]
    assert len(completion.token_ids) == MAX_TOKENS
    assert completion.finish_reason == "length"
    assert isinstance(completion.text, str) and completion.text
    # Greedy decoding is deterministic: the same prompt gives the same tokens.
    again = loop.run_until_complete(_generate(engine, prompt_ids, temperature=0.0, ignore_eos=True))
    assert list(again.outputs[0].token_ids) == list(completion.token_ids)


def test_n_sampled_completions_in_one_request(running: Running, tiny_profile: dict[str, Any]) -> None:
    engine, loop = running.engine, running.loop
    prompt_ids = _chat_ids(tiny_profile["reasoner"]["model"], "Objects most likely added:")
    sampled = _generate(engine, prompt_ids, temperature=1.0, n=4, seed=1, ignore_eos=True)
    result = loop.run_until_complete(sampled)
    assert len(result.outputs) == 4
    assert all(len(o.token_ids) == MAX_TOKENS for o in result.outputs)
    assert len({tuple(o.token_ids) for o in result.outputs}) > 1
