"""InstructCIR's difference task without a model: the built-in prompt, the prompt plan, the answer's parse."""

from __future__ import annotations

import pytest

from cir_common.errors import InvalidArgument
from cir_reasoner import prompts
from cir_reasoner.generation import PreparedPrompt
from cir_reasoner.parsing import Outcome, parse_answer, plain_words
from cir_reasoner.templates import DIFFERENCE_TEMPLATE, TemplateRegistry, TemplateTask

PAPER_TASK = (
    "You have two captions for two images, image A and image B, you are supposed to write a reformulation "
    "text describing changing from image A to image B."
)
PAPER_RULES = (
    "answer should be concise and within 12 words, only contain normal words, do not use special characters."
)


def _parse(raw: str | None, error: str = "") -> tuple[str, Outcome]:
    parsed = parse_answer(raw, "", labels=["Difference:"], error=error, plain=True)
    return parsed.text, parsed.outcome


def _words(text: str) -> PreparedPrompt:
    return PreparedPrompt(text=text, token_count=len(text.split()))


def test_the_builtin_prompt_is_the_papers_with_both_captions_and_the_cue() -> None:
    template = TemplateRegistry.load().get(DIFFERENCE_TEMPLATE, TemplateTask.DIFFERENCE)
    assert template.builtin and template.task is TemplateTask.DIFFERENCE
    prompt = template.render("a red circle on white", "a blue square on black")
    assert prompt == (
        f"{PAPER_TASK}\n\ncaption A: a red circle on white\ncaption B: a blue square on black\n"
        f"{PAPER_RULES}\nDifference:"
    )


def test_an_edit_template_has_no_rules_line_before_its_cue() -> None:
    template = TemplateRegistry.load().get("edit_structural", TemplateTask.EDIT)
    assert template.before_answer == ""
    assert template.render("a dog", "make it red").endswith(
        "\n\nImage Content: a dog\nInstruction: make it red\nEdited Description:"
    )


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("Difference: change the red circle to a blue square.", "change the red circle to a blue square."),
        ('  "Make the dog black and add snow."\nSecond line', "Make the dog black and add snow."),
        ("\n\n- **Replace** the cat with a puppy!!!", "Replace the cat with a puppy"),
        ("swap #day for @night (with stars) :)", "swap day for night with stars"),
        ("the dog's collar is bright-red now", "the dog's collar is bright-red now"),
        ("a - b , c . d", "a b c d"),
        ("Difference: “turn the café lights on”", "turn the café lights on"),
    ],
)
def test_the_answer_is_its_first_line_in_plain_words(raw: str, text: str) -> None:
    assert _parse(raw) == (text, Outcome.PARSED)


@pytest.mark.parametrize("raw", ["", "  \n ", "Difference:", "*** !!! ###", '""'])
def test_nothing_left_is_the_empty_fallback_with_no_text(raw: str) -> None:
    assert _parse(raw) == ("", Outcome.FALLBACK_EMPTY)


def test_a_failed_call_is_the_error_fallback_with_no_text() -> None:
    parsed = parse_answer(None, "", labels=["Difference:"], error="deadline passed", plain=True)
    assert (parsed.text, parsed.outcome) == ("", Outcome.FALLBACK_ERROR)
    assert "deadline passed" in parsed.reason


def test_plain_words_leaves_an_edit_answer_alone_unless_asked() -> None:
    raw = "A cat (grey) on a mat #1"
    assert parse_answer(raw, "x").text == raw
    assert plain_words(raw) == "A cat grey on a mat 1"


def test_one_prompt_per_pair_and_a_pair_over_the_budget_is_refused_by_index() -> None:
    template = TemplateRegistry.load().get(DIFFERENCE_TEMPLATE, TemplateTask.DIFFERENCE)
    pairs = [
        prompts.CaptionPair("a red circle", "a blue square"),
        prompts.CaptionPair("a cat", "a dog"),
    ]
    fits = max(_words(template.render(p.caption_a, p.caption_b)).token_count for p in pairs)
    plan = prompts.caption_pairs(template, pairs, _words, prompts.Budget(fits, "test budget"))
    assert [item.caption_indices for item in plan.items] == [(0,), (1,)]
    assert [item.captions for item in plan.items] == [("a red circle", "a blue square"), ("a cat", "a dog")]
    assert (plan.captions_used, plan.truncated) == (2, False)
    long_pairs = [pairs[0], prompts.CaptionPair("a cat", "a dog " * 50)]
    with pytest.raises(InvalidArgument, match=r"pairs\[1\]: the prompt has \d+ tokens, over the budget"):
        prompts.caption_pairs(template, long_pairs, _words, prompts.Budget(fits, "test budget"))
