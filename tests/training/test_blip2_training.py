"""Training the captioner's BLIP-2 on world images: the loss, determinism, and the written folder served by
the captioner's own loader and decoding code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import Blip2ForConditionalGeneration, Blip2Processor, PreTrainedTokenizerFast

from cir_captioner.blip2_loading import load_blip2
from cir_captioner.decoding import DecodingOverrides, resolve_decoding
from cir_captioner.engine import CaptionEngine
from cir_captioner.settings import CaptionerSettings
from cir_common.vocabulary import DecodingVariant
from cir_tools.packs.common import random_model
from cir_tools.packs.tiny_captioner import Blip2Shapes, blip2_config
from cir_tools.training.blip2 import (
    ATTRIBUTES,
    IGNORE_INDEX,
    PROMPT,
    AttributeObjective,
    CaptionedPair,
    caption_batch,
    caption_loss,
    caption_tokenizer,
    encode_caption,
    greedy_captions,
    pixel_values,
    scene_attribute_targets,
    train_blip2,
    write_trained_blip2,
)
from cir_tools.world.corpus import CaptionedImage, caption_texts, captioned_images
from cir_tools.world.scene import Scene, WorldObject

# Far smaller than the world's shapes: the tests check the mechanics, not caption quality.
TEST_SHAPES = Blip2Shapes(
    vision={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "initializer_range": 0.02,
    },
    qformer={
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "encoder_hidden_size": 32,
    },
    text={
        "hidden_size": 32,
        "word_embed_proj_dim": 32,
        "num_hidden_layers": 2,
        "ffn_dim": 64,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
    },
    num_query_tokens=4,
    generation={"max_new_tokens": 30},
)
TEXTS = caption_texts(500, seed=3)
# Every word the world's captions use (with a comma taken as a word of its own).
WORLD_WORDS = frozenset(word for text in TEXTS for word in re.findall(r"[a-z]+|,", text))


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return caption_tokenizer(TEXTS, 400)


@pytest.fixture(scope="module")
def examples() -> list[CaptionedImage]:
    return captioned_images(6, seed=5, image_size=32)


@pytest.fixture(scope="module")
def pairs(examples: list[CaptionedImage]) -> list[CaptionedPair]:
    return [(example.image, example.captions) for example in examples]


def _train(
    pairs: list[CaptionedPair], tokenizer: PreTrainedTokenizerFast, steps: int, seed: int = 0
) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    return train_blip2(pairs, TEST_SHAPES, steps, 6, 1e-2, seed, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def trained(
    pairs: list[CaptionedPair], tokenizer: PreTrainedTokenizerFast
) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    return _train(pairs, tokenizer, steps=100)


@pytest.fixture(scope="module")
def folder(
    trained: tuple[Blip2ForConditionalGeneration, Blip2Processor], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    return write_trained_blip2(tmp_path_factory.mktemp("blip2") / "world-blip2", *trained)


def test_world_words_are_single_tokens(tokenizer: PreTrainedTokenizerFast) -> None:
    for word in WORLD_WORDS - {","}:
        assert len(tokenizer.tokenize(" " + word)) == 1, word
    assert tokenizer.tokenize(PROMPT) == ["a", "\u0120photo", "\u0120of"]


def test_the_loss_is_on_the_caption_and_eos_only(tokenizer: PreTrainedTokenizerFast) -> None:
    prompt_length = len(tokenizer(PROMPT)["input_ids"])  # BOS + 3 words
    short = encode_caption(tokenizer, "a red star on a plain white background")
    longer = encode_caption(tokenizer, "a large red star on the left on a plain white background")
    batch = caption_batch(torch.zeros(2, 3, 32, 32), [short, longer], prompt_length, 4, 4, 0)

    assert batch.input_ids.shape == (2, 4 + len(longer))
    assert batch.input_ids[:, :4].eq(4).all()  # one <image> placeholder per query token
    labels = batch.labels[0].tolist()
    caption_start = 4 + prompt_length
    assert labels[:caption_start] == [IGNORE_INDEX] * caption_start
    assert labels[caption_start : 4 + len(short)] == short[prompt_length:]
    assert short[-1] == tokenizer.eos_token_id
    assert labels[4 + len(short) :] == [IGNORE_INDEX] * (len(longer) - len(short))  # padding
    assert batch.attention_mask[0].tolist() == [1] * (4 + len(short)) + [0] * (len(longer) - len(short))
    assert tokenizer.decode(short[prompt_length:-1]).strip() == "a red star on a plain white background"


def test_training_lowers_the_loss_on_its_images(
    pairs: list[CaptionedPair],
    tokenizer: PreTrainedTokenizerFast,
    trained: tuple[Blip2ForConditionalGeneration, Blip2Processor],
) -> None:
    model, processor = trained
    prompt_length = len(tokenizer(PROMPT)["input_ids"])
    # One fixed caption per image (the canonical one), so both losses see the same batch.
    batch = caption_batch(
        pixel_values(processor, [image for image, _ in pairs]),
        [encode_caption(tokenizer, captions[0]) for _, captions in pairs],
        prompt_length,
        TEST_SHAPES.num_query_tokens,
        model.config.image_token_id,
        tokenizer.pad_token_id,
    )
    # The seed's initial weights, as train_blip2 draws them (it then also gives the query tokens a start).
    untrained = random_model(Blip2ForConditionalGeneration, blip2_config(TEST_SHAPES, tokenizer), 0).eval()
    with torch.no_grad():
        before = float(caption_loss(untrained, batch))
        after = float(caption_loss(model, batch))
    assert before > 4.0  # about ln(vocabulary): nothing learned
    assert after < 0.25 * before


def test_the_same_seed_trains_the_same_weights(
    pairs: list[CaptionedPair], tokenizer: PreTrainedTokenizerFast
) -> None:
    first, _ = _train(pairs, tokenizer, steps=5, seed=1)
    second, _ = _train(pairs, tokenizer, steps=5, seed=1)
    other, _ = _train(pairs, tokenizer, steps=5, seed=2)
    first_state, second_state, other_state = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(first_state[name], second_state[name]) for name in first_state)
    assert not all(torch.equal(first_state[name], other_state[name]) for name in first_state)


def test_a_trained_model_ends_its_captions(
    pairs: list[CaptionedPair], trained: tuple[Blip2ForConditionalGeneration, Blip2Processor]
) -> None:
    model, processor = trained
    captions = greedy_captions(model, processor, [image for image, _ in pairs], max_new_tokens=40)
    for caption in captions:
        # Stopped at EOS: a caption cut at the token limit would be ~40 words long.
        assert 0 < len(caption.split()) < 32
        assert set(re.findall(r"[a-z]+|,", caption)) <= WORLD_WORDS


@pytest.mark.parametrize("variant", [DecodingVariant.NUCLEUS, DecodingVariant.BEAM_SAMPLE])
def test_the_captioner_service_captions_with_the_written_folder(
    folder: Path, pairs: list[CaptionedPair], variant: DecodingVariant
) -> None:
    assert (folder / "generation_config.json").is_file() and (folder / "processor_config.json").is_file()
    blip2 = load_blip2(str(folder), "cpu", "auto")
    assert blip2.model.generation_config.eos_token_id == blip2.processor.tokenizer.eos_token_id
    settings = CaptionerSettings(model=str(folder))
    params = resolve_decoding(
        DecodingOverrides(variant=variant, seed=0),
        15,
        settings.decoding_defaults(),
        settings.decoding_limits(),
    )
    [captions] = CaptionEngine(blip2).caption(params, [pairs[0][0]])

    assert len(captions) == 15
    for caption in captions:
        assert caption and not caption.startswith(PROMPT)
        assert set(re.findall(r"[a-z]+|,", caption)) <= WORLD_WORDS, caption
        assert re.fullmatch(r"[a-z ,]+", caption), caption


def test_scene_attribute_targets_name_each_slot_and_the_background() -> None:
    scene = Scene.of(
        [WorldObject("star", "blue", "large", "right"), WorldObject("circle", "red", "small", "left")],
        background="white",
        texture="dotted",
    )
    [row] = scene_attribute_targets([scene]).tolist()
    named = {
        name: classes[index] if index != IGNORE_INDEX else None
        for (name, classes), index in zip(ATTRIBUTES, row, strict=True)
    }
    assert named == {
        "left.object": "present",
        "left.colour": "red",
        "left.shape": "circle",
        "left.size": "small",
        "center.object": "absent",
        "center.colour": None,
        "center.shape": None,
        "center.size": None,
        "right.object": "present",
        "right.colour": "blue",
        "right.shape": "star",
        "right.size": "large",
        "background": "white",
        "texture": "dotted",
    }


def test_the_attribute_objective_learns_and_stays_out_of_the_saved_folder(
    examples: list[CaptionedImage],
    pairs: list[CaptionedPair],
    tokenizer: PreTrainedTokenizerFast,
    tmp_path: Path,
) -> None:
    losses: list[float] = []
    model, processor = train_blip2(
        pairs,
        TEST_SHAPES,
        2,
        6,
        1e-2,
        0,
        lambda step, total, loss: losses.append(loss),
        tokenizer=tokenizer,
        scenes=[example.scene for example in examples],
        attributes=AttributeObjective(weight=1.0, warmup_steps=40),
    )
    # The warm-up steps report the attribute loss alone: it falls as the head reads the scenes.
    assert len(losses) == 42
    assert sum(losses[35:40]) / 5 < 0.5 * losses[0]

    folder = write_trained_blip2(tmp_path / "blip2", model, processor)
    saved = Blip2ForConditionalGeneration.from_pretrained(folder)
    plain = random_model(Blip2ForConditionalGeneration, blip2_config(TEST_SHAPES, tokenizer), 0)
    assert type(saved) is Blip2ForConditionalGeneration
    assert set(saved.state_dict()) == set(plain.state_dict())  # the head's weights were not written
    assert saved.config.architectures == ["Blip2ForConditionalGeneration"]


def test_the_attribute_objective_is_seeded(
    examples: list[CaptionedImage], pairs: list[CaptionedPair], tokenizer: PreTrainedTokenizerFast
) -> None:
    def train(seed: int) -> dict[str, torch.Tensor]:
        model, _ = train_blip2(
            pairs,
            TEST_SHAPES,
            3,
            6,
            1e-2,
            seed,
            tokenizer=tokenizer,
            scenes=[example.scene for example in examples],
            attributes=AttributeObjective(weight=0.5, warmup_steps=2),
        )
        return model.state_dict()

    first, second = train(1), train(1)
    assert all(torch.equal(first[name], second[name]) for name in first)
