"""Phi from text only (LinCIR's recipe, and the SEARLE-shaped objective) on a real open_clip CLIP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from cir_encoder.clip_loading import LoadedClip, load_clip
from cir_encoder.engine import EncoderEngine
from cir_encoder.phi import load_phi
from cir_encoder.pseudo_tokens import encode_with_pseudo_tokens, text_tower
from cir_tools.packs.tiny_encoder import TINY_CLIP_NAME, build_tiny_encoder, save_phi
from cir_tools.training.phi import (
    TEMPLATE_PROMPT,
    PhiTrainingSettings,
    keyword_prompt,
    placeholder_token_id,
    train_phi,
)

TEXTS = [
    "a large red circle on the left on a gray background",
    "a small blue square on the right on a white background",
    "a yellow star in the center on a black striped background",
    "a green triangle on the left and a red square on the right",
    "two small purple circles on a gray dotted background",
    "a large orange square in the center on a white background",
    "a blue star on the right and a green circle on the left",
    "a small red triangle on a black background",
]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> LoadedClip:
    files = build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))
    return load_clip(TINY_CLIP_NAME, str(files.checkpoint), str(files.config_dir), "cpu", "fp32")


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_keyword_prompt_replaces_each_keyword_run_with_the_placeholder() -> None:
    caption = "a large red circle on the left and a small blue square on the right"
    assert keyword_prompt(caption) == "$ on $ and $ on $"
    # Nothing to replace: LinCIR's fallback template.
    assert keyword_prompt("on and of") == TEMPLATE_PROMPT
    # A "$" in the caption is not mistaken for a placeholder the prompt already has.
    assert keyword_prompt("costs $ 5 on sale") == "$ on $"


@pytest.mark.parametrize("network", ["lincir", "searle"])
def test_loss_on_a_fixed_batch_falls(tiny_clip: LoadedClip, network: str) -> None:
    # All texts in every batch, no noise, the template only: one fixed batch, so the loss must fall.
    settings = PhiTrainingSettings(
        steps=30, batch_size=len(TEXTS), lr=2e-3, warmup_steps=1, noise_std=0.0, template_fraction=1.0
    )
    losses: list[float] = []
    totals: set[int] = set()

    def progress(step: int, total: int, loss: float) -> None:
        totals.add(total)
        losses.append(loss)

    phi = train_phi(tiny_clip.model, tiny_clip.tokenizer, TEXTS, settings, network, progress)
    assert len(losses) == 30 and totals == {30}
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5]), losses
    assert not phi.training and not any(p.requires_grad for p in phi.parameters())
    # The CLIP model is left as it was handed over: frozen in eval mode (the loader's state).
    assert not tiny_clip.model.training and not any(p.requires_grad for p in tiny_clip.model.parameters())


def test_trained_phi_brings_the_prompt_close_to_its_caption(tiny_clip: LoadedClip) -> None:
    settings = PhiTrainingSettings(steps=30, batch_size=len(TEXTS), lr=2e-3, warmup_steps=1, noise_std=0.0)
    untrained = train_phi(tiny_clip.model, tiny_clip.tokenizer, TEXTS, PhiTrainingSettings(steps=0))
    trained = train_phi(tiny_clip.model, tiny_clip.tokenizer, TEXTS, settings)
    tower = text_tower(tiny_clip.model)
    prompts = tiny_clip.tokenizer([TEMPLATE_PROMPT] * len(TEXTS))
    with torch.no_grad():
        targets = tiny_clip.model.encode_text(tiny_clip.tokenizer(TEXTS))
        before, after = (
            torch.nn.functional.cosine_similarity(
                encode_with_pseudo_tokens(tower, prompts, network(targets), 259), targets
            ).mean()
            for network in (untrained, trained)
        )
    assert after > before + 0.2, (float(before), float(after))


def test_same_seed_same_weights(tiny_clip: LoadedClip, one_thread: None) -> None:
    settings = PhiTrainingSettings(steps=5, batch_size=4, seed=3)
    first = train_phi(tiny_clip.model, tiny_clip.tokenizer, TEXTS, settings).state_dict()
    second = train_phi(tiny_clip.model, tiny_clip.tokenizer, TEXTS, settings).state_dict()
    other = train_phi(
        tiny_clip.model, tiny_clip.tokenizer, TEXTS, PhiTrainingSettings(steps=5, batch_size=4, seed=4)
    )
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], value) for key, value in other.state_dict().items())


def test_checkpoint_serves_in_the_encoder_as_a_mapping_network(tiny_clip: LoadedClip, tmp_path: Path) -> None:
    phi = train_phi(tiny_clip.model, tiny_clip.tokenizer, TEXTS, PhiTrainingSettings(steps=5, batch_size=4))
    path = save_phi(phi, tmp_path / "phi.pt")
    assert set(torch.load(path, weights_only=True)) == {"Phi"}
    loaded = load_phi(path, tiny_clip.embed_dim, tiny_clip.text_width)
    assert loaded.architecture == "phi"
    engine = EncoderEngine(tiny_clip, {"lincir": loaded}, "lincir", 1.25)
    embeddings = np.random.default_rng(0).standard_normal((3, tiny_clip.embed_dim)).astype(np.float32)
    ids = engine.tokenize(["a photo of $ that is red"] * 3).ids
    served = engine.embed_composed(ids, engine.pseudo_tokens(loaded, embeddings))
    with torch.no_grad():
        tokens = phi(torch.from_numpy(embeddings))
        expected = encode_with_pseudo_tokens(text_tower(tiny_clip.model), ids, tokens, 259)
    assert torch.equal(torch.from_numpy(served), expected)


def test_bad_inputs_are_refused(tiny_clip: LoadedClip) -> None:
    with pytest.raises(ValueError, match="unknown network 'pic2word'"):
        train_phi(tiny_clip.model, tiny_clip.tokenizer, TEXTS, network="pic2word")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 non-empty texts"):
        train_phi(tiny_clip.model, tiny_clip.tokenizer, ["one caption", "  "])
    assert placeholder_token_id(tiny_clip.tokenizer) == 259
