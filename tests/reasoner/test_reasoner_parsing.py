"""Parsing of LLM answers and the documented fallbacks (method.md 3.6)."""

from __future__ import annotations

import pytest

from cir_reasoner.parsing import Outcome, extract_answer, parse_answer

T = "is at sunset and has a dog surfing next to him"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("A surfer at sunset with a dog.", "A surfer at sunset with a dog."),
        ("  A surfer at sunset.  \n", "A surfer at sunset."),
        # The model echoed the cue of the prompt, in any case, with or without a space.
        ("Edited Description: A surfer at sunset.", "A surfer at sunset."),
        ("edited description:A surfer at sunset.", "A surfer at sunset."),
        ("Objects most likely added: dog, sunset", "dog, sunset"),
        # The label on a line of its own: the answer is the next non-empty line.
        ("Edited Description:\n\n  A surfer at sunset.\n", "A surfer at sunset."),
        # Several lines: only the first non-empty one counts.
        ("\n\nA surfer at sunset.\nImage Content: something else\nInstruction: more", "A surfer at sunset."),
        # Quotes and bullets, alone or together, in either order.
        ('"A surfer at sunset."', "A surfer at sunset."),
        ("“A surfer at sunset.”", "A surfer at sunset."),
        ("'A surfer at sunset.'", "A surfer at sunset."),
        ("- A surfer at sunset.", "A surfer at sunset."),
        ("* A surfer at sunset.", "A surfer at sunset."),
        ("• A surfer at sunset.", "A surfer at sunset."),
        ("1. A surfer at sunset.", "A surfer at sunset."),
        ('- "A surfer at sunset."', "A surfer at sunset."),
        ('"- A surfer at sunset."', "A surfer at sunset."),
        ('- Edited Description: "A surfer at sunset."', "A surfer at sunset."),
        # A quote left open (an answer cut at max_tokens) is dropped; apostrophes are kept.
        ('"A surfer at sunset', "A surfer at sunset"),
        ("the surfers' dog at sunset", "the surfers' dog at sunset"),
        ('a sign saying "surf" on the beach', 'a sign saying "surf" on the beach'),
        # A number that starts the answer is not a list marker.
        ("2 surfers at sunset", "2 surfers at sunset"),
    ],
)
def test_extract_answer(raw: str, expected: str) -> None:
    assert extract_answer(raw) == expected


def test_the_templates_own_label_is_stripped_too() -> None:
    assert extract_answer("Target: a dog", labels=["Target:"]) == "a dog"
    assert extract_answer("Target: a dog") == "Target: a dog"


def test_parsed_answer() -> None:
    parsed = parse_answer("Edited Description: A dog surfing.", T)
    assert (parsed.text, parsed.outcome, parsed.reason) == ("A dog surfing.", Outcome.PARSED, "")


@pytest.mark.parametrize(
    "raw", ["", "   \n\n  ", "Edited Description:", '""', "- ", "Edited Description: \n\n"]
)
def test_empty_answers_fall_back_to_the_instruction_for_edits(raw: str) -> None:
    parsed = parse_answer(raw, T)
    assert parsed.text == T
    assert parsed.outcome is Outcome.FALLBACK_EMPTY
    assert "empty" in parsed.reason or "nothing was left" in parsed.reason
    assert f"{len(raw)} characters" in parsed.reason


def test_empty_objects_fall_back_to_nothing() -> None:
    parsed = parse_answer("Objects most likely added:", "")
    assert (parsed.text, parsed.outcome) == ("", Outcome.FALLBACK_EMPTY)


def test_a_failed_call_falls_back_and_says_why() -> None:
    parsed = parse_answer(None, T, error="HTTP 503 from http://llm/v1/chat/completions")
    assert parsed.text == T
    assert parsed.outcome is Outcome.FALLBACK_ERROR
    assert parsed.reason == "the LLM call failed: HTTP 503 from http://llm/v1/chat/completions"
    objects = parse_answer(None, "", error="no answer before the caller's deadline")
    assert (objects.text, objects.outcome) == ("", Outcome.FALLBACK_ERROR)
