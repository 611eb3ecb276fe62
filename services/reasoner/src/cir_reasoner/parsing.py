"""Turning an LLM answer into one line of text, with the documented fallbacks (method.md 3.6).

Steps: drop a leading answer label the model echoed (`Edited Description:`, `Objects most likely added:`,
`Difference:`, or the template's own cue), keep the first non-empty line, strip list bullets and enclosing
quotes. A difference text (InstructCIR) is also reduced to plain words, as its prompt asks: characters other
than letters, digits, spaces and in-word `'` `-` or a `,` `.` after a word are dropped. When nothing is
left, or the call failed, the fallback is used: the instruction T for an edited caption (CIReVL's choice),
"" for the added objects (CVSI's choice) and for a difference text (the triplet is skipped); the outcome
says which happened and why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from cir_reasoner.templates import DEFAULT_ANSWER_LABELS


class Outcome(StrEnum):
    PARSED = "parsed"
    FALLBACK_EMPTY = "fallback_empty"
    FALLBACK_ERROR = "fallback_error"


@dataclass(frozen=True)
class ParsedAnswer:
    text: str
    outcome: Outcome
    reason: str = ""


KNOWN_LABELS = tuple(DEFAULT_ANSWER_LABELS.values())
# "-", "*", "+", "•" and "1." / "1)" list markers, followed by whitespace or alone on the line.
_BULLET = re.compile(r"^(?:[-*+•‣◦]|\d{1,3}[.)])(?:\s+|$)")
_PAIRS = {'"': '"', "'": "'", "“": "”", "‘": "’", "`": "`", "«": "»"}
# A double quote at one end only: an answer cut off by max_tokens, or a model that quotes sloppily.
# Single quotes are left alone when unpaired: they are apostrophes too ("the dogs'").
_LONE_QUOTES = '"“”`'
# Plain words: what is neither a word character (less "_"), whitespace nor , . ' - goes first; then an
# apostrophe or hyphen not inside a word, and a comma or period not right after a word.
_NOT_PLAIN = re.compile(r"[^\w\s,.'’-]|_")
_STRAY_MARKS = re.compile(r"(?<!\w)['’-]|['’-](?!\w)|(?<![\w])[,.]")


def extract_answer(raw: str, labels: Iterable[str] = ()) -> str:
    """The answer line from a raw completion; "" when there is none."""
    all_labels = sorted({*KNOWN_LABELS, *(label for label in labels if label)}, key=len, reverse=True)
    text = _strip_label(raw.strip(), all_labels)
    line = next((candidate.strip() for candidate in text.splitlines() if candidate.strip()), "")
    previous = None
    while line != previous:  # a bullet may hide a quote or a label and the other way round
        previous = line
        line = _BULLET.sub("", line).strip()
        line = _strip_label(line, all_labels)
        line = _strip_quotes(line)
    return line


def _strip_label(text: str, labels: list[str]) -> str:
    lowered = text.lower()
    for label in labels:
        if lowered.startswith(label.lower()):
            return text[len(label) :].strip()
    return text


def _strip_quotes(text: str) -> str:
    while len(text) >= 2 and _PAIRS.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    if text[:1] in _LONE_QUOTES and not any(q in text[1:] for q in _LONE_QUOTES):
        text = text[1:].strip()
    if text[-1:] in _LONE_QUOTES and not any(q in text[:-1] for q in _LONE_QUOTES):
        text = text[:-1].strip()
    return text


def plain_words(text: str) -> str:
    """`text` with special characters dropped and whitespace collapsed (the difference prompt's rule)."""
    # One pass of each is enough: a mark is kept only beside word characters, which are never dropped.
    text = _STRAY_MARKS.sub(" ", _NOT_PLAIN.sub(" ", text))
    return " ".join(text.split())


def parse_answer(
    raw: str | None,
    fallback: str,
    *,
    labels: Iterable[str] = (),
    error: str = "",
    plain: bool = False,
) -> ParsedAnswer:
    """Parse `raw`; `raw` None means the call failed (`error` says why); `plain`: keep plain words only."""
    if raw is None:
        return ParsedAnswer(fallback, Outcome.FALLBACK_ERROR, f"the LLM call failed: {error or 'no answer'}")
    text = extract_answer(raw, labels)
    if plain:
        text = plain_words(text)
    if text:
        return ParsedAnswer(text, Outcome.PARSED)
    reason = (
        "the model's answer was empty" if not raw.strip() else "nothing was left of the answer after parsing"
    )
    return ParsedAnswer(fallback, Outcome.FALLBACK_EMPTY, f"{reason} (raw output: {len(raw)} characters)")
