"""Contrastive CLIP training: it learns, it is reproducible, and what it saves the encoder loads unchanged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

from cir_encoder.clip_loading import load_clip
from cir_tools.training.clip import (
    ClipTrainingSettings,
    clip_tokenizer,
    contrastive_loss,
    eval_transform,
    retrieval_recall_at_1,
    save_clip,
    train_clip,
    warmup_cosine,
)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 230), "yellow": (240, 220, 20)}
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _pairs() -> list[tuple[Image.Image, tuple[str, ...]]]:
    """A stand-in world: a coloured square on the left or the right of a gray canvas."""
    pairs = []
    for name, rgb in COLOURS.items():
        for side, x in (("left", 2), ("right", 18)):
            image = Image.new("RGB", (32, 32), (128, 128, 128))
            image.paste(rgb, (x, 8, x + 12, 20))
            pairs.append((image, (f"a {name} square on the {side}", f"a gray picture with a {name} square")))
    return pairs


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Bitwise reproducibility holds for a fixed thread count; one thread is the portable choice.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    transform = eval_transform(32)
    pairs = _pairs()
    return torch.stack([transform(image) for image, _ in pairs]), clip_tokenizer()([c[0] for _, c in pairs])


def test_loss_on_a_fixed_batch_falls(one_thread: None) -> None:
    from open_clip.model import CLIP

    settings = ClipTrainingSettings(steps=60, batch_size=8, lr=2e-3, warmup_steps=5, seed=1)
    torch.manual_seed(settings.seed)
    untrained = CLIP(**TINY).eval()  # what train_clip starts from: same seed, same class
    pixels, ids = _fixed_batch()
    losses: list[float] = []
    steps: list[tuple[int, int]] = []

    def progress(step: int, total: int, loss: float) -> None:
        steps.append((step, total))
        losses.append(loss)

    trained = train_clip(TINY, _pairs(), settings, progress=progress)
    with torch.no_grad():
        before = float(contrastive_loss(untrained, pixels, ids))
        after = float(contrastive_loss(trained, pixels, ids))
    assert steps == [(step, settings.steps) for step in range(1, settings.steps + 1)]
    assert after < 0.5 * before, (before, after)
    assert not trained.training and not any(p.requires_grad for p in trained.parameters())


def test_same_seed_same_weights(one_thread: None) -> None:
    settings = ClipTrainingSettings(steps=4, batch_size=4, seed=7)
    first = train_clip(TINY, _pairs(), settings).state_dict()
    second = train_clip(TINY, _pairs(), settings).state_dict()
    other = train_clip(TINY, _pairs(), ClipTrainingSettings(steps=4, batch_size=4, seed=8)).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


def test_saved_model_loads_through_the_encoder_loader_with_identical_outputs(tmp_path: Path) -> None:
    trained = train_clip(TINY, _pairs(), ClipTrainingSettings(steps=3, batch_size=4))
    checkpoint = save_clip(trained, tmp_path / "clip", TINY, "test-trained-clip")
    pixels, ids = _fixed_batch()
    with torch.no_grad():
        expected_images, expected_texts = trained.encode_image(pixels), trained.encode_text(ids)
    by_config_dir = load_clip("test-trained-clip", str(checkpoint), str(tmp_path / "clip"), "cpu", "fp32")
    by_local_dir = load_clip(f"local-dir:{tmp_path / 'clip'}", None, None, "cpu", "fp32")
    for loaded in (by_config_dir, by_local_dir):
        # The loader's own tokenizer and preprocess give the inputs the training used.
        assert torch.equal(loaded.tokenizer([c[0] for _, c in _pairs()]), ids)
        assert torch.equal(torch.stack([loaded.preprocess(image) for image, _ in _pairs()]), pixels)
        with torch.no_grad():
            assert torch.equal(loaded.model.encode_image(pixels), expected_images)
            assert torch.equal(loaded.model.encode_text(ids), expected_texts)


def test_recall_counts_a_shared_caption_as_a_hit() -> None:
    trained = train_clip(TINY, _pairs(), ClipTrainingSettings(steps=2, batch_size=4))
    images = [image for image, _ in _pairs()][:2]
    # Both images carry the same caption: whichever image a caption picks, it is right.
    assert retrieval_recall_at_1(trained, clip_tokenizer(), eval_transform(32), images, ["same", "same"]) == (
        1.0,
        1.0,
    )


def test_schedule_warms_up_then_decays_to_zero() -> None:
    factor = warmup_cosine(warmup_steps=10, total_steps=110)
    assert factor(0) == pytest.approx(0.1)
    assert factor(9) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0)


def test_too_few_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        train_clip(TINY, _pairs()[:1])
    with pytest.raises(ValueError, match="at least one caption"):
        train_clip(TINY, [(_pairs()[0][0], ()), _pairs()[1]])
