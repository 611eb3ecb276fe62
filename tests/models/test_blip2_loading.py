"""The tiny BLIP-2 loads through the production loader and captions through `generate`."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from cir_captioner.blip2_loading import LoadedBlip2, load_blip2
from cir_common.errors import ConfigError


@pytest.fixture(scope="module")
def blip2(tiny_profile: dict[str, Any]) -> LoadedBlip2:
    return load_blip2(tiny_profile["captioner"]["model"], "cpu", "auto")


def _inputs(blip2: LoadedBlip2) -> dict[str, torch.Tensor]:
    image = Image.new("RGB", (120, 90), (240, 200, 10))
    return dict(blip2.processor(images=image, text="a photo of", return_tensors="pt"))


def test_loads_with_identity_and_sizes(blip2: LoadedBlip2, tiny_profile: dict[str, Any]) -> None:
    folder = Path(tiny_profile["captioner"]["model"])
    weights = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert blip2.weights_sha256 == weights
    assert blip2.identity == f"{folder.name}@sha256:{weights}"
    assert blip2.image_size == (32, 32)
    assert blip2.num_query_tokens == 8
    assert blip2.dtype == torch.float32 and blip2.device == "cpu"
    assert not blip2.model.training


def test_processor_prepends_one_image_token_per_query(blip2: LoadedBlip2) -> None:
    inputs = _inputs(blip2)
    assert inputs["pixel_values"].shape == (1, 3, 32, 32)
    image_token = blip2.model.config.image_token_index
    ids = inputs["input_ids"][0].tolist()
    assert ids[:8] == [image_token] * 8
    assert image_token not in ids[8:]
    assert blip2.processor.tokenizer.decode(ids[8:], skip_special_tokens=True) == "a photo of"


def test_generates_sampled_captions(blip2: LoadedBlip2) -> None:
    inputs = _inputs(blip2)
    prompt_length = inputs["input_ids"].shape[1]
    torch.manual_seed(0)
    with torch.no_grad():
        output = blip2.model.generate(
            **inputs,
            do_sample=True,
            top_p=0.9,
            temperature=1.0,
            num_beams=1,
            max_new_tokens=30,
            num_return_sequences=15,
        )
    assert output.shape[0] == 15
    assert prompt_length < output.shape[1] <= prompt_length + 30
    # The decoder-only LM returns the prompt followed by the continuation.
    assert torch.equal(output[:, :prompt_length], inputs["input_ids"].expand(15, -1))
    captions = [
        c.strip() for c in blip2.processor.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
    ]
    assert len(captions) == 15
    assert len(set(captions)) > 1  # sampled, so (random weights or not) not all the same


def test_greedy_generation_is_deterministic(blip2: LoadedBlip2) -> None:
    inputs = _inputs(blip2)
    with torch.no_grad():
        first = blip2.model.generate(**inputs, do_sample=False, max_new_tokens=10)
        second = blip2.model.generate(**inputs, do_sample=False, max_new_tokens=10)
    assert torch.equal(first, second)


def test_a_folder_that_is_not_blip2_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="could not load BLIP-2"):
        load_blip2(str(tmp_path), "cpu", "auto")
    with pytest.raises(ConfigError, match="not a folder"):
        load_blip2(str(tmp_path / "absent"), "cpu", "auto")
    with pytest.raises(ConfigError, match="unknown captioner dtype"):
        load_blip2(str(tmp_path), "cpu", "int3")
