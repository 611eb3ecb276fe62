"""Image-side mapping networks: Pic2Word's mapping and the SEARLE-shaped Phi, saved in their formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cir_encoder.clip_loading import LoadedClip, load_clip
from cir_encoder.phi import load_phi
from cir_tools.packs.tiny_encoder import TINY_CLIP_NAME, build_tiny_encoder, save_phi, save_pic2word
from cir_tools.training.mapping import MappingTrainingSettings, embed_images, train_pic2word, train_searle

CAPTIONS = [
    "a red square",
    "a green square",
    "a blue square",
    "a yellow square",
    "a white square",
    "a gray square",
]
RGB = [(220, 30, 30), (30, 200, 40), (30, 60, 230), (240, 220, 20), (250, 250, 250), (128, 128, 128)]
FIXED_BATCH = MappingTrainingSettings(steps=30, batch_size=len(CAPTIONS), lr=2e-3, warmup_steps=1)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> LoadedClip:
    files = build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))
    return load_clip(TINY_CLIP_NAME, str(files.checkpoint), str(files.config_dir), "cpu", "fp32")


@pytest.fixture(scope="module")
def image_embeddings(tiny_clip: LoadedClip) -> torch.Tensor:
    images = [Image.new("RGB", (64, 64), rgb) for rgb in RGB]
    return embed_images(tiny_clip.model, tiny_clip.preprocess, images)


def test_pic2word_learns_and_loads_as_pic2word(
    tiny_clip: LoadedClip, image_embeddings: torch.Tensor, tmp_path: Path
) -> None:
    losses: list[float] = []
    mapping = train_pic2word(
        tiny_clip.model,
        tiny_clip.tokenizer,
        image_embeddings,
        FIXED_BATCH,
        lambda _, __, loss: losses.append(loss),
    )
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    path = save_pic2word(mapping, tmp_path / "pic2word.pt")
    saved = torch.load(path, weights_only=True)["state_dict_img2text"]
    assert all(key.startswith("module.") for key in saved)
    loaded = load_phi(path, tiny_clip.embed_dim, tiny_clip.text_width)
    assert loaded.architecture == "pic2word"
    with torch.no_grad():
        assert torch.equal(loaded.module(image_embeddings), mapping(image_embeddings))


def test_searle_learns_and_loads_as_phi(
    tiny_clip: LoadedClip, image_embeddings: torch.Tensor, tmp_path: Path
) -> None:
    losses: list[float] = []
    phi = train_searle(
        tiny_clip.model,
        tiny_clip.tokenizer,
        image_embeddings,
        CAPTIONS,
        FIXED_BATCH,
        lambda _, __, loss: losses.append(loss),
    )
    # An untrained CLIP's text and image spaces are unrelated: the cosine loss has a floor well above 0.
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5]), losses
    loaded = load_phi(save_phi(phi, tmp_path / "searle.pt"), tiny_clip.embed_dim, tiny_clip.text_width)
    assert loaded.architecture == "phi"
    with torch.no_grad():
        assert torch.equal(loaded.module(image_embeddings), phi(image_embeddings))


def test_bad_inputs_are_refused(tiny_clip: LoadedClip, image_embeddings: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="5 captions for 6 image embeddings"):
        train_searle(tiny_clip.model, tiny_clip.tokenizer, image_embeddings, CAPTIONS[:5])
    with pytest.raises(ValueError, match="at least 2 image embeddings"):
        train_pic2word(tiny_clip.model, tiny_clip.tokenizer, image_embeddings[:1])
