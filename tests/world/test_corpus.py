"""The training corpus: seeded, byte-identical for the same arguments, and drawn from train scenes only."""

from __future__ import annotations

import random

from cir_tools.world.corpus import (
    HELDOUT,
    TRAIN,
    caption_texts,
    captioned_images,
    edit_examples,
    is_heldout,
    partition_of,
    sample_scene_in,
)
from cir_tools.world.edits import MODIFICATION_KINDS, sample_modification
from cir_tools.world.language import canonical_caption, paraphrases
from cir_tools.world.scene import sample_scene


def test_partition_is_stable_and_about_one_fifth_heldout() -> None:
    rng = random.Random(0)
    scenes = list({sample_scene(rng) for _ in range(5000)})
    heldout = sum(1 for scene in scenes if is_heldout(scene))
    assert 0.17 < heldout / len(scenes) < 0.23
    # Fixed values: the split must not change between processes, machines or Python versions.
    first = sample_scene(random.Random(1))
    assert canonical_caption(first) == "a large red triangle on the left on a brown striped background"
    assert partition_of(first) == TRAIN
    held = sample_scene(random.Random(19))
    assert canonical_caption(held) == (
        "a small purple triangle on the left and a large yellow square on the right "
        "on a plain white background"
    )
    assert partition_of(held) == HELDOUT
    assert [partition_of(sample_scene(random.Random(seed))) for seed in range(40)].count(HELDOUT) == 6


def test_sample_scene_in_respects_the_partition() -> None:
    rng = random.Random(2)
    assert all(is_heldout(sample_scene_in(HELDOUT, rng)) for _ in range(200))
    assert not any(is_heldout(sample_scene_in(TRAIN, rng)) for _ in range(200))


def test_captioned_images_are_train_scenes_with_their_paraphrases() -> None:
    examples = captioned_images(120, seed=3, image_size=32)
    assert len(examples) == 120
    for example in examples:
        assert not is_heldout(example.scene)
        assert example.captions == tuple(paraphrases(example.scene))
        assert example.image.size == (32, 32) and example.image.mode == "RGB"
    assert len({example.scene for example in examples}) > 100


def test_corpus_is_byte_identical_for_the_same_arguments() -> None:
    first, second = captioned_images(40, seed=11), captioned_images(40, seed=11)
    assert [e.image.tobytes() for e in first] == [e.image.tobytes() for e in second]
    assert [e.captions for e in first] == [e.captions for e in second]
    assert [e.captions for e in captioned_images(40, seed=12)] != [e.captions for e in first]
    assert caption_texts(50, seed=4) == caption_texts(50, seed=4)
    assert edit_examples(50, seed=4) == edit_examples(50, seed=4)
    assert edit_examples(50, seed=4) != edit_examples(50, seed=5)


def test_caption_texts_are_paraphrases_of_train_scenes() -> None:
    texts = caption_texts(300, seed=6)
    assert len(texts) == 300 and len(set(texts)) > 250
    # Re-derive each text's scene the way the corpus draws it: every one is a train scene.
    rng = random.Random(6)
    for text in texts:
        scene = sample_scene_in(TRAIN, rng)
        assert text == rng.choice(paraphrases(scene)) and not is_heldout(scene)


def test_edit_examples_never_touch_heldout_scenes() -> None:
    examples = edit_examples(400, seed=8)
    assert {example.kind for example in examples} == set(MODIFICATION_KINDS)
    rng = random.Random(8)
    # Re-derive the scenes the same way the corpus does, and check both ends of every edit are train scenes.
    checked = 0
    while checked < len(examples):
        reference = sample_scene_in(TRAIN, rng)
        modification = sample_modification(reference, rng)
        if is_heldout(modification.target):
            continue
        example = examples[checked]
        assert example.reference_captions == tuple(paraphrases(reference))
        assert example.target_caption == canonical_caption(modification.target)
        assert example.instruction == modification.text and example.added_objects == modification.added
        assert not is_heldout(reference) and not is_heldout(modification.target)
        checked += 1
    for example in examples:
        assert example.reference_captions[0] != example.target_caption
        if example.kind in ("add", "count"):
            assert len(example.added_objects) == 1
        else:
            assert example.added_objects == ()
