"""Modifications of scenes (the kinds the CIR papers list that fit this world), targets and hard distractors.

A modification is a reference scene, a text in one of several phrasings, and the target scene the text asks
for. Texts name their object uniquely in the reference (by shape, colour, size or slot, the fewest words that
do) and fully determine the target, so a modification has exactly one target scene.

Hard distractors are the scenes a retriever must rank below the target (each kind only where it exists):
- `DISTRACTOR_REFERENCE`: the reference itself (what image-only retrieval finds);
- `DISTRACTOR_WRONG_OBJECT`: the same change applied to another object (for an added object: another slot);
- `DISTRACTOR_PARTIAL`: the change only half made: the edited attribute changes, but to another value than
  asked (colour, shape, background, slot), or an added object has the right slot but a wrong colour or shape;
- `DISTRACTOR_EXTRA_CHANGE`: the target plus one unrelated change (the background or an untouched object).
Text alone cannot pick the target among them either: the extra-change distractor satisfies the text too.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, replace

from cir_tools.world.language import noun_phrase, plural, position_phrase
from cir_tools.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES, Scene, WorldObject

__all__ = [
    "DISTRACTOR_EXTRA_CHANGE",
    "DISTRACTOR_KINDS",
    "DISTRACTOR_PARTIAL",
    "DISTRACTOR_REFERENCE",
    "DISTRACTOR_WRONG_OBJECT",
    "KIND_ADD",
    "KIND_BACKGROUND",
    "KIND_COLOUR",
    "KIND_COUNT",
    "KIND_REMOVE",
    "KIND_SHAPE",
    "KIND_SIZE",
    "KIND_SPATIAL",
    "MODIFICATION_KINDS",
    "Modification",
    "distractor_candidates",
    "hard_distractors",
    "modification_kinds_for",
    "referring_expression",
    "sample_modification",
]

KIND_COLOUR = "colour"
KIND_SHAPE = "shape"
KIND_SIZE = "size"
KIND_BACKGROUND = "background"
KIND_ADD = "add"
KIND_REMOVE = "remove"
KIND_COUNT = "count"
KIND_SPATIAL = "spatial"
MODIFICATION_KINDS: tuple[str, ...] = (
    KIND_COLOUR,
    KIND_SHAPE,
    KIND_SIZE,
    KIND_BACKGROUND,
    KIND_ADD,
    KIND_REMOVE,
    KIND_COUNT,
    KIND_SPATIAL,
)

DISTRACTOR_REFERENCE = "reference"
DISTRACTOR_WRONG_OBJECT = "wrong_object"
DISTRACTOR_PARTIAL = "partial"
DISTRACTOR_EXTRA_CHANGE = "extra_change"
DISTRACTOR_KINDS: tuple[str, ...] = (
    DISTRACTOR_REFERENCE,
    DISTRACTOR_WRONG_OBJECT,
    DISTRACTOR_PARTIAL,
    DISTRACTOR_EXTRA_CHANGE,
)

_MAX_ATTEMPTS = 100


@dataclass(frozen=True)
class Modification:
    """A text that turns `reference` into `target`.

    `added`: short noun phrases ("a yellow star") of the objects the target gains, empty when none.
    `phrasings`: every phrasing of this same change (`text` is one of them), e.g. for two relative captions.
    """

    kind: str
    text: str
    reference: Scene
    target: Scene
    added: tuple[str, ...] = ()
    phrasings: tuple[str, ...] = ()


# --- naming objects ----------------------------------------------------------------------------------------


def referring_expression(scene: Scene, item: WorldObject) -> str:
    """The shortest of "the circle", "the red circle", "the large circle", "the large red circle" that names
    `item` alone in `scene`; failing all, its slot decides ("the red circle on the left")."""
    candidates: list[tuple[Callable[[WorldObject], tuple[str, ...]], str]] = [
        (lambda o: (o.shape,), f"the {item.shape}"),
        (lambda o: (o.colour, o.shape), f"the {item.colour} {item.shape}"),
        (lambda o: (o.size, o.shape), f"the {item.size} {item.shape}"),
        (lambda o: (o.size, o.colour, o.shape), f"the {item.size} {item.colour} {item.shape}"),
    ]
    for key, words in candidates:
        if sum(1 for other in scene.objects if key(other) == key(item)) == 1:
            return words
    return f"the {item.colour} {item.shape} {position_phrase(item.position)}"


def _short_noun(item: WorldObject) -> str:
    return noun_phrase(item, size=False)


def _replaced(scene: Scene, old: WorldObject, new: WorldObject | None) -> Scene:
    objects = [item for item in scene.objects if item != old]
    if new is not None:
        objects.append(new)
    return Scene.of(objects, scene.background, scene.texture)


def _added(scene: Scene, new: WorldObject) -> Scene:
    return Scene.of([*scene.objects, new], scene.background, scene.texture)


# --- the kinds ---------------------------------------------------------------------------------------------
# Each builder returns None when its kind does not apply to the scene (e.g. remove from a one-object scene).


def _colour_edit(scene: Scene, rng: random.Random) -> Modification:
    item = rng.choice(scene.objects)
    colour = rng.choice([name for name in COLOURS if name != item.colour])
    ref = referring_expression(scene, item)
    phrasings = (
        f"make {ref} {colour}",
        f"change the colour of {ref} to {colour}",
        f"turn {ref} {colour}",
        f"paint {ref} {colour}",
    )
    return _build(KIND_COLOUR, scene, _replaced(scene, item, replace(item, colour=colour)), phrasings, rng)


def _shape_edit(scene: Scene, rng: random.Random) -> Modification:
    item = rng.choice(scene.objects)
    shape = rng.choice([name for name in SHAPES if name != item.shape])
    ref = referring_expression(scene, item)
    phrasings = (
        f"replace {ref} with a {shape}",
        f"turn {ref} into a {shape}",
        f"make {ref} a {shape}",
        f"change {ref} to a {shape}",
    )
    return _build(KIND_SHAPE, scene, _replaced(scene, item, replace(item, shape=shape)), phrasings, rng)


def _size_edit(scene: Scene, rng: random.Random) -> Modification:
    item = rng.choice(scene.objects)
    size = "small" if item.size == "large" else "large"
    ref = referring_expression(scene, item)
    comparative = "bigger" if size == "large" else "smaller"
    verb = "enlarge" if size == "large" else "shrink"
    phrasings = (f"make {ref} {comparative}", f"make {ref} {size}", f"{verb} {ref}")
    return _build(KIND_SIZE, scene, _replaced(scene, item, replace(item, size=size)), phrasings, rng)


def _background_edit(scene: Scene, rng: random.Random) -> Modification:
    if rng.random() < 0.5:
        colour = rng.choice([name for name in BACKGROUNDS if name != scene.background])
        target = replace(scene, background=colour)
        phrasings = (
            f"change the background to {colour}",
            f"make the background {colour}",
            f"use a {colour} background",
        )
    else:
        texture = rng.choice([name for name in TEXTURES if name != scene.texture])
        target = replace(scene, texture=texture)
        phrasings = (
            f"make the background {texture}",
            f"use a {texture} background",
            f"change the background to {texture}",
        )
    return _build(KIND_BACKGROUND, scene, target, phrasings, rng)


def _add_edit(scene: Scene, rng: random.Random) -> Modification | None:
    free = scene.free_positions()
    present = {(item.colour, item.shape) for item in scene.objects}
    # A colour and shape already present would make this a count edit ("add another ...").
    options = [(colour, shape) for colour in COLOURS for shape in SHAPES if (colour, shape) not in present]
    if not free:
        return None
    colour, shape = rng.choice(options)
    new = WorldObject(shape=shape, colour=colour, size=rng.choice(SIZES), position=rng.choice(free))
    where = position_phrase(new.position)
    phrase = noun_phrase(new)
    phrasings = (f"add {phrase} {where}", f"put {phrase} {where}", f"also show {phrase} {where}")
    return _build(KIND_ADD, scene, _added(scene, new), phrasings, rng, added=(_short_noun(new),))


def _remove_edit(scene: Scene, rng: random.Random) -> Modification | None:
    if len(scene.objects) < 2:
        return None
    item = rng.choice(scene.objects)
    ref = referring_expression(scene, item)
    phrasings = (f"remove {ref}", f"take away {ref}", f"get rid of {ref}", f"delete {ref}")
    return _build(KIND_REMOVE, scene, _replaced(scene, item, None), phrasings, rng)


def _count_edit(scene: Scene, rng: random.Random) -> Modification | None:
    free = scene.free_positions()
    singles = [
        item
        for item in scene.objects
        if sum(1 for other in scene.objects if (other.colour, other.shape) == (item.colour, item.shape)) == 1
    ]
    if not free or not singles:
        return None
    item = rng.choice(singles)
    # "Another" one is a copy: same size; the slot is named unless only one is free.
    new = replace(item, position=rng.choice(free))
    things = f"{item.colour} {plural(item.shape)}"
    one = f"{item.colour} {item.shape}"
    if len(free) == 1:
        phrasings = (f"add another {one}", f"add a second {one}", f"make it two {things}")
    else:
        where = position_phrase(new.position)
        phrasings = (
            f"add another {one} {where}",
            f"add a second {one} {where}",
            f"make it two {things}, the new one {where}",
        )
    return _build(KIND_COUNT, scene, _added(scene, new), phrasings, rng, added=(_short_noun(new),))


def _spatial_edit(scene: Scene, rng: random.Random) -> Modification | None:
    free = scene.free_positions()
    if free and (len(scene.objects) < 2 or rng.random() < 0.6):
        item = rng.choice(scene.objects)
        position = rng.choice(free)
        ref = referring_expression(scene, item)
        side = "the center" if position == "center" else f"the {position}"
        phrasings = (
            f"move {ref} to {side}",
            f"put {ref} {position_phrase(position)}",
            f"shift {ref} to {side}",
        )
        return _build(
            KIND_SPATIAL, scene, _replaced(scene, item, replace(item, position=position)), phrasings, rng
        )
    if len(scene.objects) < 2:
        return None
    first, second = rng.sample(scene.objects, 2)
    if (first.shape, first.colour, first.size) == (second.shape, second.colour, second.size):
        return None  # swapping identical objects changes nothing
    one, other = referring_expression(scene, first), referring_expression(scene, second)
    swapped = _swap(scene, first, second)
    phrasings = (f"swap {one} and {other}", f"switch the places of {one} and {other}")
    return _build(KIND_SPATIAL, scene, swapped, phrasings, rng)


def _swap(scene: Scene, first: WorldObject, second: WorldObject) -> Scene:
    objects = [item for item in scene.objects if item not in (first, second)]
    objects += [replace(first, position=second.position), replace(second, position=first.position)]
    return Scene.of(objects, scene.background, scene.texture)


def _build(
    kind: str,
    reference: Scene,
    target: Scene,
    phrasings: tuple[str, ...],
    rng: random.Random,
    added: tuple[str, ...] = (),
) -> Modification:
    return Modification(kind, rng.choice(phrasings), reference, target, added, phrasings)


_BUILDERS: dict[str, Callable[[Scene, random.Random], Modification | None]] = {
    KIND_COLOUR: _colour_edit,
    KIND_SHAPE: _shape_edit,
    KIND_SIZE: _size_edit,
    KIND_BACKGROUND: _background_edit,
    KIND_ADD: _add_edit,
    KIND_REMOVE: _remove_edit,
    KIND_COUNT: _count_edit,
    KIND_SPATIAL: _spatial_edit,
}


def modification_kinds_for(scene: Scene) -> tuple[str, ...]:
    """The kinds that apply to `scene` (add, count, moves need a free slot; remove, swaps two objects)."""
    free = bool(scene.free_positions())
    many = len(scene.objects) >= 2
    singles = any(
        sum(1 for other in scene.objects if (other.colour, other.shape) == (item.colour, item.shape)) == 1
        for item in scene.objects
    )
    applies = {
        KIND_COLOUR: True,
        KIND_SHAPE: True,
        KIND_SIZE: True,
        KIND_BACKGROUND: True,
        KIND_ADD: free,
        KIND_REMOVE: many,
        KIND_COUNT: free and singles,
        KIND_SPATIAL: free or many,
    }
    return tuple(kind for kind in MODIFICATION_KINDS if applies[kind])


def sample_modification(
    scene: Scene, rng: random.Random, kinds: tuple[str, ...] | None = None
) -> Modification:
    """A valid random modification of `scene` (a kind that applies, uniformly; drawn again until valid).

    `kinds` restricts the choice; ValueError when none of them applies to the scene.
    """
    allowed = [kind for kind in modification_kinds_for(scene) if kinds is None or kind in kinds]
    if not allowed:
        raise ValueError(f"none of the kinds {kinds} applies to the scene {scene}")
    for _ in range(_MAX_ATTEMPTS):
        modification = _BUILDERS[rng.choice(allowed)](scene, rng)
        if modification is not None and modification.target != scene:
            return modification
    raise RuntimeError(f"no valid modification of {scene} after {_MAX_ATTEMPTS} attempts")


# --- hard distractors --------------------------------------------------------------------------------------


def _by_position(scene: Scene) -> dict[str, WorldObject]:
    return {item.position: item for item in scene.objects}


def _wrong_object(modification: Modification) -> list[Scene]:
    reference, target = modification.reference, modification.target
    before, after = _by_position(reference), _by_position(target)
    scenes: list[Scene] = []
    if modification.kind in (KIND_COLOUR, KIND_SHAPE, KIND_SIZE):
        position = next(p for p in before if before[p] != after.get(p))
        changed = after[position]
        for other in reference.objects:
            if other.position == position:
                continue
            if modification.kind == KIND_COLOUR:
                moved = replace(other, colour=changed.colour)
            elif modification.kind == KIND_SHAPE:
                moved = replace(other, shape=changed.shape)
            else:
                moved = replace(other, size=changed.size)
            scenes.append(_replaced(reference, other, moved))
    elif modification.kind == KIND_REMOVE:
        removed = next(p for p in before if p not in after)
        scenes += [
            _replaced(reference, other, None) for other in reference.objects if other.position != removed
        ]
    elif modification.kind in (KIND_ADD, KIND_COUNT):
        position = next(p for p in after if p not in before)
        new = after[position]
        if modification.kind == KIND_ADD:
            scenes += [
                _added(reference, replace(new, position=p))
                for p in reference.free_positions()
                if p != position
            ]
        else:  # another copy, of another object, in the same slot
            scenes += [
                _added(reference, replace(other, position=position))
                for other in reference.objects
                if (other.colour, other.shape) != (new.colour, new.shape)
            ]
    elif modification.kind == KIND_SPATIAL:
        gone = [p for p in before if p not in after]
        if gone:  # a move: another object into the same slot
            arrived = next(p for p in after if p not in before)
            scenes += [
                _replaced(reference, other, replace(other, position=arrived))
                for other in reference.objects
                if other.position != gone[0]
            ]
        else:  # a swap: another pair swapped
            swapped = {p for p in before if before[p] != after[p]}
            for first in reference.objects:
                for second in reference.objects:
                    pair = {first.position, second.position}
                    if POSITIONS.index(first.position) < POSITIONS.index(second.position) and pair != swapped:
                        scenes.append(_swap(reference, first, second))
    return scenes


def _partial(modification: Modification) -> list[Scene]:
    reference, target = modification.reference, modification.target
    before, after = _by_position(reference), _by_position(target)
    scenes: list[Scene] = []
    if modification.kind in (KIND_COLOUR, KIND_SHAPE):
        position = next(p for p in before if before[p] != after.get(p))
        old, new = before[position], after[position]
        if modification.kind == KIND_COLOUR:
            values = [c for c in COLOURS if c not in (old.colour, new.colour)]
            scenes += [_replaced(reference, old, replace(old, colour=c)) for c in values]
        else:
            values = [s for s in SHAPES if s not in (old.shape, new.shape)]
            scenes += [_replaced(reference, old, replace(old, shape=s)) for s in values]
    elif modification.kind == KIND_BACKGROUND:
        if reference.background != target.background:
            values = [b for b in BACKGROUNDS if b not in (reference.background, target.background)]
            scenes += [replace(reference, background=b) for b in values]
        else:
            values = [t for t in TEXTURES if t not in (reference.texture, target.texture)]
            scenes += [replace(reference, texture=t) for t in values]
    elif modification.kind in (KIND_ADD, KIND_COUNT):
        position = next(p for p in after if p not in before)
        new = after[position]
        scenes += [_added(reference, replace(new, colour=c)) for c in COLOURS if c != new.colour]
        scenes += [_added(reference, replace(new, shape=s)) for s in SHAPES if s != new.shape]
    elif modification.kind == KIND_SPATIAL:
        gone = [p for p in before if p not in after]
        if gone:  # moved, but to the other free slot
            arrived = next(p for p in after if p not in before)
            item = before[gone[0]]
            scenes += [
                _replaced(reference, item, replace(item, position=p))
                for p in reference.free_positions()
                if p != arrived
            ]
    return scenes


def _extra_change(modification: Modification) -> list[Scene]:
    reference, target = modification.reference, modification.target
    scenes: list[Scene] = []
    if modification.kind != KIND_BACKGROUND:
        scenes += [replace(target, background=b) for b in BACKGROUNDS if b != target.background]
        scenes += [replace(target, texture=t) for t in TEXTURES if t != target.texture]
    else:
        changed_colour = reference.background != target.background
        if changed_colour:
            scenes += [replace(target, texture=t) for t in TEXTURES if t != target.texture]
        else:
            scenes += [replace(target, background=b) for b in BACKGROUNDS if b != target.background]
    # An object neither the text nor the edit touched gets another colour.
    untouched = [item for item in target.objects if item in reference.objects]
    for item in untouched:
        scenes += [_replaced(target, item, replace(item, colour=c)) for c in COLOURS if c != item.colour]
    return scenes


def distractor_candidates(modification: Modification) -> dict[str, list[Scene]]:
    """Every hard distractor of `modification` by kind (lists empty where a kind does not exist), none of them
    equal to the target, the partial and extra-change ones never equal to the reference either."""
    target, reference = modification.target, modification.reference
    found = {
        DISTRACTOR_REFERENCE: [reference],
        DISTRACTOR_WRONG_OBJECT: _wrong_object(modification),
        DISTRACTOR_PARTIAL: _partial(modification),
        DISTRACTOR_EXTRA_CHANGE: _extra_change(modification),
    }
    result: dict[str, list[Scene]] = {}
    for kind, scenes in found.items():
        unique: list[Scene] = []
        for scene in scenes:
            if (
                scene != target
                and (kind == DISTRACTOR_REFERENCE or scene != reference)
                and scene not in unique
            ):
                unique.append(scene)
        result[kind] = unique
    return result


def hard_distractors(modification: Modification, rng: random.Random) -> list[Scene]:
    """One distractor of each kind that exists, in `DISTRACTOR_KINDS` order; never the target."""
    candidates = distractor_candidates(modification)
    return [rng.choice(candidates[kind]) for kind in DISTRACTOR_KINDS if candidates[kind]]
