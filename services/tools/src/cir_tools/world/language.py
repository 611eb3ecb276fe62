"""Captions of scenes: one canonical caption and a few paraphrases, all lower-case without a final period.

The canonical caption lists the objects left to right with size, colour, shape and slot, then the background:
"a large red circle on the left and a small blue square on the right on a gray striped background".
Paraphrases reorder, reword, and one of them counts objects by colour and shape ("two red circles and a blue
square on ..."), so that count edits ("add another red circle") have words to land on.
"""

from __future__ import annotations

from cir_tools.world.scene import Scene, WorldObject

__all__ = [
    "background_phrase",
    "canonical_caption",
    "join_phrases",
    "noun_phrase",
    "paraphrases",
    "plural",
    "position_phrase",
    "with_article",
]

_PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "star": "stars",
}
_NUMBERS: tuple[str, ...] = ("no", "one", "two", "three")
_VOWELS = frozenset("aeiou")
_POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
}


def plural(shape: str) -> str:
    return _PLURALS.get(shape, shape + "s")


def position_phrase(position: str) -> str:
    """Where a slot is, as a prepositional phrase: "on the left", "in the center", "on the right"."""
    return _POSITION_PHRASES[position]


def with_article(words: str) -> str:
    """The words with their indefinite article: a red circle, an orange star."""
    return ("an " if words[:1] in _VOWELS else "a ") + words


def noun_phrase(item: WorldObject, *, size: bool = True) -> str:
    """The object as a noun phrase: a large red circle (without the size: a red circle, an orange star)."""
    words = [item.size, item.colour, item.shape] if size else [item.colour, item.shape]
    return with_article(" ".join(words))


def background_phrase(scene: Scene) -> str:
    """The background as a noun phrase: a gray striped background, a plain white background."""
    if scene.texture == "plain":
        return f"a plain {scene.background} background"
    return f"a {scene.background} {scene.texture} background"


def join_phrases(phrases: list[str]) -> str:
    """English list: "a", "a and b", "a, b and c"."""
    if len(phrases) <= 2:
        return " and ".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _placed(item: WorldObject) -> str:
    return f"{noun_phrase(item)} {position_phrase(item.position)}"


def _counted(scene: Scene) -> str:
    # Groups by colour and shape in left-to-right order of first appearance; sizes and slots are left out.
    groups: dict[tuple[str, str], int] = {}
    for item in scene.objects:
        key = (item.colour, item.shape)
        groups[key] = groups.get(key, 0) + 1
    phrases = []
    for (colour, shape), count in groups.items():
        if count == 1:
            phrases.append(with_article(f"{colour} {shape}"))
        else:
            phrases.append(f"{_NUMBERS[count]} {colour} {plural(shape)}")
    return join_phrases(phrases)


def canonical_caption(scene: Scene) -> str:
    objects = join_phrases([_placed(item) for item in scene.objects])
    return f"{objects} on {background_phrase(scene)}"


def paraphrases(scene: Scene) -> list[str]:
    """Several distinct captions of `scene`, the canonical one first."""
    left_to_right = join_phrases([_placed(item) for item in scene.objects])
    right_to_left = join_phrases([_placed(item) for item in reversed(scene.objects)])
    background = background_phrase(scene)
    opening = "there is" if len(scene.objects) == 1 else "there are"
    candidates = [
        canonical_caption(scene),
        f"{opening} {left_to_right} against {background}",
        f"a picture of {right_to_left} on {background}",
        f"{_counted(scene)} on {background}",
        f"{background} with {left_to_right}",
    ]
    unique: list[str] = []
    for caption in candidates:
        if caption not in unique:
            unique.append(caption)
    return unique
