"""Modifications: each kind changes the scene exactly as its text says; distractors have their properties.

Checked on the scenes (slot by slot), with the text only used to see that it names what changed.
"""

from __future__ import annotations

import random

import pytest

from cir_tools.world.edits import (
    DISTRACTOR_EXTRA_CHANGE,
    DISTRACTOR_KINDS,
    DISTRACTOR_PARTIAL,
    DISTRACTOR_REFERENCE,
    DISTRACTOR_WRONG_OBJECT,
    KIND_ADD,
    KIND_BACKGROUND,
    KIND_COLOUR,
    KIND_COUNT,
    KIND_REMOVE,
    KIND_SPATIAL,
    MODIFICATION_KINDS,
    Modification,
    distractor_candidates,
    hard_distractors,
    modification_kinds_for,
    referring_expression,
    sample_modification,
)
from cir_tools.world.language import plural, position_phrase
from cir_tools.world.scene import Scene, WorldObject, sample_scene

Slots = dict[str, WorldObject]


def _scene(*objects: tuple[str, str, str, str], background: str = "gray", texture: str = "plain") -> Scene:
    return Scene.of([WorldObject(*item) for item in objects], background, texture)


def _slots(scene: Scene) -> Slots:
    return {item.position: item for item in scene.objects}


def _changed_slots(before: Scene, after: Scene) -> set[str]:
    a, b = _slots(before), _slots(after)
    return {position for position in set(a) | set(b) if a.get(position) != b.get(position)}


def _attribute_changes(before: WorldObject, after: WorldObject) -> set[str]:
    return {name for name in ("shape", "colour", "size") if getattr(before, name) != getattr(after, name)}


def _modifications(kind: str, count: int = 150, seed: int = 0) -> list[Modification]:
    rng = random.Random(f"{kind}/{seed}")
    found = []
    while len(found) < count:
        scene = sample_scene(rng)
        if kind in modification_kinds_for(scene):
            found.append(sample_modification(scene, rng, (kind,)))
    return found


def _edited_slot(modification: Modification) -> str:
    (position,) = _changed_slots(modification.reference, modification.target)
    return position


def test_every_kind_is_a_named_constant_and_sampled() -> None:
    assert MODIFICATION_KINDS == (
        "colour",
        "shape",
        "size",
        "background",
        "add",
        "remove",
        "count",
        "spatial",
    )
    rng = random.Random(1)
    seen = set()
    for _ in range(600):
        scene = sample_scene(rng)
        modification = sample_modification(scene, rng)
        assert modification.target != modification.reference
        assert modification.text in modification.phrasings and len(set(modification.phrasings)) >= 2
        seen.add(modification.kind)
    assert seen == set(MODIFICATION_KINDS)


def test_sample_modification_is_seeded() -> None:
    scene = sample_scene(random.Random(5))
    first = sample_modification(scene, random.Random(9))
    assert first == sample_modification(scene, random.Random(9))


def test_kinds_that_cannot_apply_are_refused() -> None:
    single = _scene(("circle", "red", "large", "left"))
    full = _scene(
        ("circle", "red", "large", "left"),
        ("square", "blue", "small", "center"),
        ("star", "green", "large", "right"),
    )
    assert KIND_REMOVE not in modification_kinds_for(single)
    assert {KIND_ADD, KIND_COUNT} & set(modification_kinds_for(full)) == set()
    with pytest.raises(ValueError):
        sample_modification(single, random.Random(0), (KIND_REMOVE,))


def test_referring_expressions_name_one_object() -> None:
    scene = _scene(
        ("circle", "red", "large", "left"),
        ("circle", "blue", "large", "center"),
        ("square", "red", "small", "right"),
    )
    assert referring_expression(scene, scene.objects[0]) == "the red circle"
    assert referring_expression(scene, scene.objects[2]) == "the square"
    twins = _scene(("star", "green", "small", "left"), ("star", "green", "small", "right"))
    assert referring_expression(twins, twins.objects[1]) == "the green star on the right"
    sized = _scene(("star", "green", "small", "left"), ("star", "green", "large", "right"))
    assert referring_expression(sized, sized.objects[1]) == "the large star"


@pytest.mark.parametrize("attribute", ["colour", "shape", "size"])
def test_attribute_edits_change_one_attribute_of_the_named_object(attribute: str) -> None:
    for modification in _modifications(attribute):
        position = _edited_slot(modification)
        before = _slots(modification.reference)[position]
        after = _slots(modification.target)[position]
        assert _attribute_changes(before, after) == {attribute}
        assert modification.target.background == modification.reference.background
        assert modification.target.texture == modification.reference.texture
        assert referring_expression(modification.reference, before) in modification.text
        if attribute != "size":
            assert getattr(after, attribute) in modification.text.split()


def test_background_edits_change_the_background_colour_or_texture_only() -> None:
    for modification in _modifications(KIND_BACKGROUND):
        reference, target = modification.reference, modification.target
        assert reference.objects == target.objects
        colour_changed = reference.background != target.background
        texture_changed = reference.texture != target.texture
        assert colour_changed != texture_changed
        named = target.background if colour_changed else target.texture
        assert named in modification.text.split()


def test_add_edits_add_the_described_object_in_a_free_slot() -> None:
    for modification in _modifications(KIND_ADD):
        position = _edited_slot(modification)
        assert position in modification.reference.free_positions()
        new = _slots(modification.target)[position]
        assert modification.text.endswith(f"{new.size} {new.colour} {new.shape} {position_phrase(position)}")
        assert modification.added == (f"{'an' if new.colour == 'orange' else 'a'} {new.colour} {new.shape}",)
        # Not a count edit: nothing of that colour and shape was there before.
        assert all((o.colour, o.shape) != (new.colour, new.shape) for o in modification.reference.objects)


def test_remove_edits_remove_exactly_the_named_object() -> None:
    for modification in _modifications(KIND_REMOVE):
        position = _edited_slot(modification)
        removed = _slots(modification.reference)[position]
        assert position not in _slots(modification.target)
        assert len(modification.target.objects) == len(modification.reference.objects) - 1
        assert referring_expression(modification.reference, removed) in modification.text
        assert modification.added == ()


def test_count_edits_add_a_copy_of_an_existing_object() -> None:
    for modification in _modifications(KIND_COUNT):
        position = _edited_slot(modification)
        new = _slots(modification.target)[position]
        copies = [o for o in modification.target.objects if (o.colour, o.shape) == (new.colour, new.shape)]
        assert len(copies) == 2 and copies[0].size == copies[1].size
        assert f"{new.colour} {new.shape}" in modification.text or f"{new.colour} {plural(new.shape)}" in (
            modification.text
        )
        if len(modification.reference.free_positions()) > 1:  # the slot must then be named
            assert position_phrase(position) in modification.text


def test_spatial_edits_move_or_swap_objects_without_changing_them() -> None:
    moves = swaps = 0
    for modification in _modifications(KIND_SPATIAL, count=300):
        reference, target = modification.reference, modification.target
        unplaced = sorted((o.shape, o.colour, o.size) for o in reference.objects)
        assert unplaced == sorted((o.shape, o.colour, o.size) for o in target.objects)
        changed = _changed_slots(reference, target)
        assert len(changed) == 2
        if modification.text.startswith(("swap", "switch")):
            swaps += 1
            assert all(position in _slots(target) and position in _slots(reference) for position in changed)
        else:
            moves += 1
            (source,) = [p for p in changed if p in _slots(reference) and p not in _slots(target)]
            (destination,) = [p for p in changed if p in _slots(target)]
            assert referring_expression(reference, _slots(reference)[source]) in modification.text
            assert destination in modification.text
    assert moves and swaps


def _one_modification(kind: str, reference: Scene, text_contains: str) -> Modification:
    for seed in range(500):
        modification = sample_modification(reference, random.Random(seed), (kind,))
        if text_contains in modification.text:
            return modification
    raise AssertionError(f"no {kind} modification mentioning {text_contains!r}")


def test_exact_modifications_spot_check() -> None:
    reference = _scene(("circle", "red", "large", "left"), ("square", "blue", "small", "right"))
    recolour = _one_modification(KIND_COLOUR, reference, "make the circle green")
    assert recolour.target == _scene(
        ("circle", "green", "large", "left"), ("square", "blue", "small", "right")
    )
    added = _one_modification(KIND_ADD, reference, "add a")
    assert added.text in added.phrasings and len(added.target.objects) == 3
    counted = _one_modification(KIND_COUNT, reference, "add another red circle")
    assert counted.target == _scene(
        ("circle", "red", "large", "left"),
        ("circle", "red", "large", "center"),
        ("square", "blue", "small", "right"),
    )
    assert counted.added == ("a red circle",)
    moved = _one_modification(KIND_SPATIAL, reference, "move the square to the center")
    assert moved.target == _scene(("circle", "red", "large", "left"), ("square", "blue", "small", "center"))


# --- distractors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MODIFICATION_KINDS)
def test_distractors_are_never_the_target_and_one_per_kind(kind: str) -> None:
    rng = random.Random(kind)
    for modification in _modifications(kind, count=80):
        candidates = distractor_candidates(modification)
        assert set(candidates) == set(DISTRACTOR_KINDS)
        assert candidates[DISTRACTOR_REFERENCE] == [modification.reference]
        chosen = hard_distractors(modification, rng)
        assert chosen[0] == modification.reference
        assert len(chosen) == sum(1 for scenes in candidates.values() if scenes)
        for scenes in candidates.values():
            assert modification.target not in scenes
        assert modification.target not in chosen


@pytest.mark.parametrize("attribute", ["colour", "shape", "size"])
def test_wrong_object_distractors_apply_the_change_to_another_object(attribute: str) -> None:
    found = 0
    for modification in _modifications(attribute):
        edited = _edited_slot(modification)
        new_value = getattr(_slots(modification.target)[edited], attribute)
        for scene in distractor_candidates(modification)[DISTRACTOR_WRONG_OBJECT]:
            found += 1
            (position,) = _changed_slots(modification.reference, scene)
            assert position != edited
            before, after = _slots(modification.reference)[position], _slots(scene)[position]
            assert _attribute_changes(before, after) == {attribute}
            assert getattr(after, attribute) == new_value
    assert found > 20


@pytest.mark.parametrize("attribute", ["colour", "shape"])
def test_partial_distractors_change_the_named_object_but_not_as_asked(attribute: str) -> None:
    for modification in _modifications(attribute):
        edited = _edited_slot(modification)
        old = getattr(_slots(modification.reference)[edited], attribute)
        asked = getattr(_slots(modification.target)[edited], attribute)
        partial = distractor_candidates(modification)[DISTRACTOR_PARTIAL]
        assert partial
        for scene in partial:
            assert _changed_slots(modification.reference, scene) == {edited}
            assert getattr(_slots(scene)[edited], attribute) not in (old, asked)


def test_partial_distractors_of_added_objects_get_one_attribute_wrong() -> None:
    for modification in _modifications(KIND_ADD) + _modifications(KIND_COUNT):
        position = _edited_slot(modification)
        new = _slots(modification.target)[position]
        for scene in distractor_candidates(modification)[DISTRACTOR_PARTIAL]:
            assert _changed_slots(modification.reference, scene) == {position}
            assert len(_attribute_changes(new, _slots(scene)[position])) == 1


@pytest.mark.parametrize("kind", MODIFICATION_KINDS)
def test_extra_change_distractors_are_the_target_plus_one_unrelated_change(kind: str) -> None:
    for modification in _modifications(kind, count=60):
        target = modification.target
        touched = _changed_slots(modification.reference, target)
        extras = distractor_candidates(modification)[DISTRACTOR_EXTRA_CHANGE]
        assert extras
        for scene in extras:
            slots = _changed_slots(target, scene)
            background_changes = (scene.background != target.background) + (scene.texture != target.texture)
            if slots:
                assert background_changes == 0 and len(slots) == 1 and not slots & touched
                (position,) = slots
                assert _attribute_changes(_slots(target)[position], _slots(scene)[position]) == {"colour"}
            else:
                assert background_changes == 1
