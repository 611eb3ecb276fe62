"""The openai backend's start-up checks: the key from the named variable, the served model, the endpoint."""

from __future__ import annotations

import httpx
import pytest

from cir_common.errors import ConfigError
from cir_reasoner.openai_backend import OpenAIBackend
from cir_reasoner.settings import ReasonerSettings


def _settings(**overrides: object) -> ReasonerSettings:
    base = {
        "backend": "openai",
        "openai_base_url": "http://llm.invalid/v1/",
        "openai_model": "tiny-llm",
        "openai_api_key_env": "CIR_TEST_LLM_KEY",
    }
    return ReasonerSettings(**{**base, **overrides})  # type: ignore[arg-type]


class _Endpoint(httpx.AsyncBaseTransport):
    """Answers GET /models the way an OpenAI-compatible server does; records what it was sent."""

    def __init__(self, status: int = 200, served: tuple[str, ...] = ("tiny-llm",)) -> None:
        self.status = status
        self.served = served
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        data = [{"id": name, "object": "model", "max_model_len": 4096} for name in self.served]
        return httpx.Response(self.status, json={"object": "list", "data": data})


async def test_the_key_comes_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIR_TEST_LLM_KEY", "s3cret")
    endpoint = _Endpoint()
    backend = await OpenAIBackend.start(_settings(), transport=endpoint)
    try:
        (request,) = endpoint.requests
        assert str(request.url) == "http://llm.invalid/v1/models"
        assert request.headers["authorization"] == "Bearer s3cret"
        assert backend.max_context == 4096 and backend.prompt_format == "chat"
        # Without a tokenizer, prompt sizes are estimated on the safe side.
        assert backend.prepare("x" * 300).token_count == 100
    finally:
        await backend.close()


async def test_no_key_no_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CIR_TEST_LLM_KEY", raising=False)
    endpoint = _Endpoint()
    backend = await OpenAIBackend.start(_settings(prompt_format="completion"), transport=endpoint)
    await backend.close()
    assert "authorization" not in endpoint.requests[0].headers
    assert backend.prompt_format == "completion"


@pytest.mark.parametrize(
    ("overrides", "endpoint", "message"),
    [
        ({"openai_model": ""}, _Endpoint(), "needs CIR_REASONER_OPENAI_BASE_URL"),
        (
            {},
            _Endpoint(served=("llama-3", "qwen")),
            "does not serve model 'tiny-llm'; it serves: llama-3, qwen",
        ),
        ({}, _Endpoint(status=401), "refused the API key (401)"),
        ({"prompt_format": "json"}, _Endpoint(), "PROMPT_FORMAT='json'"),
    ],
)
async def test_configuration_mistakes_stop_the_start(
    overrides: dict[str, object], endpoint: _Endpoint, message: str
) -> None:
    # The settings refuse their own mistakes when built; the endpoint's are found when the backend starts.
    with pytest.raises(ConfigError) as caught:
        await OpenAIBackend.start(_settings(**overrides), transport=endpoint)
    assert message in caught.value.message


async def test_an_endpoint_that_is_down_does_not_stop_the_start() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    backend = await OpenAIBackend.start(_settings(), transport=httpx.MockTransport(refuse))
    await backend.close()
    assert backend.max_context is None
