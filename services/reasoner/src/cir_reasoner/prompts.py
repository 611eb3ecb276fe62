"""Which prompts a request becomes, within the prompt budget (method.md 3.1 steps 3-4).

Edited captions: `per_caption` makes one prompt per caption, `joined` one prompt with the captions joined
by ", ". Added objects: one prompt from the first caption or from all of them joined. A prompt must fit
the budget: the smaller of max_prompt_tokens and what the model's context leaves after max_tokens.
Captions that do not fit are dropped (joined: from the end) and the response says so.

Differences (InstructCIR): one prompt per caption pair, caption A and caption B in the template's two
slots. A pair is the unit the caller asked about, so a pair whose prompt does not fit is refused by index,
never dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cir_common.errors import InvalidArgument
from cir_reasoner.generation import PreparedPrompt
from cir_reasoner.templates import PromptTemplate

CAPTION_SEPARATOR = ", "

Prepare = Callable[[str], PreparedPrompt]


@dataclass(frozen=True)
class CaptionPair:
    """The captions of image A and image B (DescribeDifferences)."""

    caption_a: str
    caption_b: str


@dataclass(frozen=True)
class PromptItem:
    prompt: PreparedPrompt
    caption_indices: tuple[int, ...]
    captions: tuple[str, ...]


@dataclass(frozen=True)
class PromptPlan:
    items: list[PromptItem]
    captions_used: int
    truncated: bool


@dataclass(frozen=True)
class Budget:
    tokens: int
    # Which setting or limit set `tokens`, for error messages.
    source: str


# per_caption, joined and first_caption: (template, captions, instruction, prepare, budget) -> plan.
Build = Callable[[PromptTemplate, Sequence[str], str, Prepare, Budget], PromptPlan]


def per_caption(
    template: PromptTemplate, captions: Sequence[str], instruction: str, prepare: Prepare, budget: Budget
) -> PromptPlan:
    items = []
    smallest = None
    for index, caption in enumerate(captions):
        prompt = prepare(template.render(caption, instruction))
        smallest = prompt.token_count if smallest is None else min(smallest, prompt.token_count)
        if prompt.token_count <= budget.tokens:
            items.append(PromptItem(prompt, (index,), (caption,)))
    if not items:
        raise _nothing_fits(smallest or 0, budget)
    return PromptPlan(items=items, captions_used=len(items), truncated=len(items) < len(captions))


def joined(
    template: PromptTemplate, captions: Sequence[str], instruction: str, prepare: Prepare, budget: Budget
) -> PromptPlan:
    def build(count: int) -> PromptItem:
        chosen = tuple(captions[:count])
        prompt = prepare(template.render(CAPTION_SEPARATOR.join(chosen), instruction))
        return PromptItem(prompt, tuple(range(count)), chosen)

    full = build(len(captions))
    if full.prompt.token_count <= budget.tokens:
        return PromptPlan(items=[full], captions_used=len(captions), truncated=False)
    # Prompt size grows with the number of captions: find the longest prefix that fits.
    best: PromptItem | None = None
    low, high = 1, len(captions) - 1
    while low <= high:
        middle = (low + high) // 2
        candidate = build(middle)
        if candidate.prompt.token_count <= budget.tokens:
            best, low = candidate, middle + 1
        else:
            high = middle - 1
    if best is None:
        raise _nothing_fits(build(1).prompt.token_count, budget)
    return PromptPlan(items=[best], captions_used=len(best.captions), truncated=True)


def first_caption(
    template: PromptTemplate, captions: Sequence[str], instruction: str, prepare: Prepare, budget: Budget
) -> PromptPlan:
    plan = joined(template, captions[:1], instruction, prepare, budget)
    return PromptPlan(items=plan.items, captions_used=1, truncated=False)


def caption_pairs(
    template: PromptTemplate, pairs: Sequence[CaptionPair], prepare: Prepare, budget: Budget
) -> PromptPlan:
    """One prompt per pair, in order; `caption_indices` holds the pair's index."""
    items = []
    for index, pair in enumerate(pairs):
        prompt = prepare(template.render(pair.caption_a, pair.caption_b))
        if prompt.token_count > budget.tokens:
            raise InvalidArgument(
                f"pairs[{index}]: the prompt has {prompt.token_count} tokens, over the budget of "
                f"{budget.tokens} ({budget.source}); shorten its captions"
            )
        items.append(PromptItem(prompt, (index,), (pair.caption_a, pair.caption_b)))
    return PromptPlan(items=items, captions_used=len(items), truncated=False)


def _nothing_fits(tokens: int, budget: Budget) -> InvalidArgument:
    return InvalidArgument(
        f"the prompt with a single caption has {tokens} tokens, over the budget of {budget.tokens} "
        f"({budget.source}); shorten the instruction or the captions"
    )
