"""Training the reasoner's LLM on the world: prompts equal the reasoner's, loss falls, runs are seeded, and
a trained model served by the vLLM CPU engine through the reasoner answers in world words.

The fast tests use a stand-in of the world's edit examples (coloured shapes, recolour / add / remove
edits) written here, so that they exercise the trainer alone; the slow tests train on the real corpus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import random
from dataclasses import dataclass

import pytest
import torch

from cir_reasoner.generation import PromptEncoder
from cir_reasoner.settings import PromptFormat
from cir_reasoner.templates import OBJECTS_ADDED_TEMPLATE, TemplateTask
from cir_tools.training import llm

_COLOURS = ("red", "green", "blue", "yellow")
_SHAPES = ("circle", "square", "star")
_SLOTS = ("on the left", "in the center", "on the right")


@dataclass(frozen=True)
class StandInEdit:
    reference_captions: tuple[str, ...]
    instruction: str
    target_caption: str
    added_objects: tuple[str, ...]
    kind: str


def _caption(objects: dict[str, tuple[str, str]], background: str) -> str:
    placed = [f"a {colour} {shape} {slot}" for slot, (colour, shape) in objects.items()]
    return f"{' and '.join(placed)} on a plain {background} background"


def stand_in_edits(count: int, seed: int) -> list[StandInEdit]:
    """Recolour, add and remove edits of scenes of one or two objects, each with two paraphrases."""
    rng = random.Random(seed)
    edits = []
    for _ in range(count):
        slots = sorted(rng.sample(range(3), rng.choice((1, 2))))
        objects = {_SLOTS[i]: (rng.choice(_COLOURS), rng.choice(_SHAPES)) for i in slots}
        background = rng.choice(("gray", "white"))
        reference = _caption(objects, background)
        flipped = _caption(dict(reversed(objects.items())), background)
        target = dict(objects)
        kind = rng.choice(("recolour", "add", "remove") if len(objects) > 1 else ("recolour", "add"))
        added: tuple[str, ...] = ()
        if kind == "recolour":
            slot = rng.choice(list(objects))
            colour = rng.choice([c for c in _COLOURS if c != objects[slot][0]])
            target[slot] = (colour, objects[slot][1])
            instruction = f"make the {objects[slot][1]} {slot} {colour}"
        elif kind == "add":
            slot = rng.choice([s for s in _SLOTS if s not in objects])
            target[slot] = (rng.choice(_COLOURS), rng.choice(_SHAPES))
            target = {s: target[s] for s in _SLOTS if s in target}
            added = (f"a {target[slot][0]} {target[slot][1]}",)
            instruction = f"add {added[0]} {slot}"
        else:
            slot = rng.choice(list(objects))
            del target[slot]
            instruction = f"remove the {objects[slot][1]} {slot}"
        edits.append(
            StandInEdit((reference, flipped), instruction, _caption(target, background), added, kind)
        )
    return edits


def _texts(edits: list[StandInEdit]) -> list[str]:
    return llm.example_texts(edits)


TINY = llm.LlmTrainingConfig(
    steps=30, batch_size=8, hidden_size=64, intermediate_size=128, layers=2, heads=2, vocab_size=600
)


@pytest.fixture(scope="module")
def tokenizer() -> object:
    return llm.world_tokenizer(_texts(stand_in_edits(300, seed=5)), TINY)


def test_world_templates_answer_to_every_name_the_presets_and_cvsi_use() -> None:
    from cir_retriever.presets import PRESETS

    templates = llm.world_templates()
    names = {values.edit_template for values in PRESETS.values()}
    assert names <= set(llm.EDIT_TEMPLATES)
    for name in llm.EDIT_TEMPLATES:
        template = templates.get(name, TemplateTask.EDIT)
        assert not template.builtin and template.source.startswith(str(llm.WORLD_TEMPLATES_DIR))
        assert template.answer_label == "Edited Description:"
    objects = templates.get(OBJECTS_ADDED_TEMPLATE, TemplateTask.OBJECTS_ADDED)
    assert not objects.builtin and objects.answer_label == "Objects most likely added:"


def test_training_prompts_are_the_reasoners_own(tokenizer: object) -> None:
    """Token ids of a joined prompt equal what the reasoner's prompt code and encoder make of the request."""
    from cir_reasoner import prompts

    edit = stand_in_edits(1, seed=3)[0]
    templates = llm.world_templates()
    (sample,) = llm.make_samples([edit], tokenizer, templates, random.Random(0), {llm.Task.JOINED: 1.0})
    template = templates.get(sample.template, TemplateTask.EDIT)
    # The reasoner's side, as the service runs it: the encoder its backends build for a chat template.
    encoder = PromptEncoder(tokenizer, PromptFormat.CHAT)
    captions = list(sample.captions)
    assert 1 <= len(captions) <= 15 and set(captions) <= set(edit.reference_captions)
    budget = prompts.Budget(4096, "test")
    (item,) = prompts.joined(template, captions, edit.instruction, encoder.prepare, budget).items
    assert sample.prompt_ids == item.prompt.token_ids
    text = tokenizer.decode(list(sample.prompt_ids))
    assert text.endswith("Edited Description:</s>\n<|assistant|>\n")
    assert ", ".join(captions) in text
    assert tokenizer.decode(list(sample.answer_ids)) == edit.target_caption + "</s>"
    assert sample.answer_ids[-1] == tokenizer.eos_token_id


def test_objects_answer_is_the_added_phrases_or_nothing() -> None:
    assert llm.objects_answer(("a red star", "a blue circle")) == "a red star, a blue circle"
    assert llm.objects_answer(()) == llm.NOTHING_ADDED == "nothing"


def test_labels_cover_the_answer_and_eos_only(tokenizer: object) -> None:
    edits = stand_in_edits(4, seed=9)
    samples = llm.make_samples(edits, tokenizer, llm.world_templates(), random.Random(1))
    batch = llm.collate(samples, tokenizer.pad_token_id)
    for row, sample in enumerate(samples):
        labelled = batch["labels"][row][batch["labels"][row] != llm.IGNORE_INDEX].tolist()
        assert labelled == list(sample.answer_ids)
        assert int(batch["attention_mask"][row].sum()) == len(sample.prompt_ids) + len(sample.answer_ids)


def test_prompt_tokens_get_the_prompt_weight_and_the_answer_full_weight(tokenizer: object) -> None:
    samples = llm.make_samples(stand_in_edits(3, seed=6), tokenizer, llm.world_templates(), random.Random(3))
    batch = llm.collate(samples, tokenizer.pad_token_id, prompt_weight=0.2)
    for row, sample in enumerate(samples):
        prompt, answer = len(sample.prompt_ids), len(sample.answer_ids)
        weights = batch["weights"][row].tolist()
        assert weights[0] == 0.0  # nothing predicts the first token
        assert weights[1:prompt] == pytest.approx([0.2] * (prompt - 1))
        assert weights[prompt : prompt + answer] == [1.0] * answer
        assert not any(weights[prompt + answer :])
        labels = batch["labels"][row].tolist()
        assert labels[1 : prompt + answer] == [*sample.prompt_ids[1:], *sample.answer_ids]


def test_joined_prompts_carry_a_caption_count_in_the_configured_span(tokenizer: object) -> None:
    edits = stand_in_edits(40, seed=8)
    rng = random.Random(4)
    samples = llm.make_samples(edits, tokenizer, llm.world_templates(), rng, {llm.Task.JOINED: 1.0}, (2, 3))
    assert {len(s.captions) for s in samples} == {2, 3}


def test_world_text_sequences_are_paraphrases_of_one_scene_with_loss_on_every_token(
    tokenizer: object,
) -> None:
    edits = stand_in_edits(3, seed=4)
    samples = llm.world_text_samples(edits, tokenizer, random.Random(0), (2, 4))
    for edit, sample in zip(edits, samples, strict=True):
        assert sample.task is None and sample.prompt_ids == (tokenizer.bos_token_id,)
        assert 2 <= len(sample.captions) <= 4 and set(sample.captions) <= set(edit.reference_captions)
        assert tokenizer.decode(list(sample.answer_ids)) == ", ".join(sample.captions) + "</s>"


def _train_tiny(tokenizer: object, steps: int, seed: int = 0) -> tuple[list[float], torch.nn.Module]:
    config = llm.LlmTrainingConfig(**{**TINY.__dict__, "steps": steps, "seed": seed})
    rng = random.Random(seed)
    samples = llm.make_samples(
        stand_in_edits(steps * config.batch_size, seed), tokenizer, llm.world_templates(), rng
    )
    batches = llm.length_grouped_batches(samples, config.batch_size, config.group_batches, rng)
    model = llm.new_model(tokenizer, config)
    return llm.train(model, batches, config, tokenizer.pad_token_id), model


def test_loss_decreases_on_a_fixed_tiny_batch(tokenizer: object) -> None:
    config = llm.LlmTrainingConfig(**{**TINY.__dict__, "steps": 40, "warmup_steps": 3, "learning_rate": 5e-3})
    samples = llm.make_samples(stand_in_edits(8, seed=2), tokenizer, llm.world_templates(), random.Random(2))
    model = llm.new_model(tokenizer, config)
    losses = llm.train(model, [samples] * config.steps, config, tokenizer.pad_token_id)
    assert losses[-1] < 0.5 * losses[0]


def test_training_is_seeded(tokenizer: object) -> None:
    first, model_a = _train_tiny(tokenizer, steps=4, seed=7)
    second, model_b = _train_tiny(tokenizer, steps=4, seed=7)
    other, _ = _train_tiny(tokenizer, steps=4, seed=8)
    assert first == second
    assert first != other
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_learning_rate_warms_up_then_decays() -> None:
    config = llm.LlmTrainingConfig(steps=100, warmup_steps=10, learning_rate=1e-3, final_lr_share=0.1)
    rates = [llm.learning_rate_at(step, config) for step in range(100)]
    assert rates[0] < rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[9:]))
    assert rates[-1] == pytest.approx(1e-4, rel=0.05)


# --- the real world, served -------------------------------------------------------------------------------

# Short training for the served test, of the shipped model's shape: enough that answers are world
# captions, not that they are all right.
SERVED = dataclasses.replace(llm.LlmTrainingConfig(), steps=200, warmup_steps=20, learning_rate=3e-3)


def _world_words() -> set[str]:
    from cir_tools.world import scene
    from cir_tools.world.language import plural

    words = {*scene.SHAPES, *map(plural, scene.SHAPES), *scene.COLOURS, *scene.SIZES, *scene.POSITIONS}
    words |= {*scene.BACKGROUNDS, *scene.TEXTURES, "a", "on", "in", "the", "and", "background", "nothing"}
    # The paraphrases' own words (an answer in a paraphrase's form is still the world's language).
    return words | {"two", "three", "no", "there", "is", "are", "against", "picture", "of", "with"}


@pytest.fixture(scope="module")
def served_model(tmp_path_factory: pytest.TempPathFactory) -> llm.TrainedLlm:
    return llm.train_world_llm(tmp_path_factory.mktemp("world-llm") / "llm", SERVED)


@pytest.mark.slow
def test_a_briefly_trained_model_served_by_vllm_through_the_reasoner_answers_in_world_words(
    served_model: llm.TrainedLlm, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    from cir_reasoner.core import Reasoner
    from cir_reasoner.parsing import Outcome
    from cir_reasoner.settings import ReasonerSettings
    from cir_tools.world import corpus

    assert served_model.losses[-1] < 0.5 * served_model.losses[0]
    # 1 GiB of KV cache: vLLM's CPU default would reserve a large share of the machine's memory.
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    settings = ReasonerSettings(
        backend="vllm",
        model=str(served_model.path),
        max_model_len=SERVED.context,
        enforce_eager=True,
        template_paths=[str(llm.WORLD_TEMPLATES_DIR)],
        max_output_tokens=64,
    )
    settings.validate()
    tokenizer = AutoTokenizer.from_pretrained(served_model.path)
    templates = llm.world_templates()
    samples = llm.evaluation_samples(corpus.edit_examples(6, seed=4242), tokenizer, templates, seed=3)

    async def serve() -> list:
        reasoner = Reasoner(settings)
        await reasoner.load()
        try:
            return await llm.reasoner_answers(reasoner, samples)
        finally:
            await reasoner.close()

    answers = asyncio.run(serve())
    gc.collect()
    world = _world_words()
    for task in llm.DEFAULT_TASK_MIX:
        parsed = [
            a for a, s in zip(answers, samples, strict=True) if s.task == task and a.outcome is Outcome.PARSED
        ]
        assert parsed, f"every {task} answer fell back"
        for answer in parsed:
            words = answer.text.replace(",", " ").split()
            assert words and set(words) <= world, answer.text
    scored = llm.score([a.raw_output for a in answers], samples, templates)
    print(f"vLLM exact match after {SERVED.steps} steps: {scored}")


def test_difference_samples_pair_the_canonical_captions_and_answer_the_instruction(tokenizer: object) -> None:
    edits = stand_in_edits(4, seed=9)
    templates = llm.world_templates(llm.TRIPLET_TEMPLATES_DIR)
    template = templates.get("difference_instructcir", TemplateTask.DIFFERENCE)
    assert not template.builtin  # the world's short prompt, not the paper's
    samples = llm.make_samples(edits, tokenizer, templates, random.Random(0), {llm.Task.DIFFERENCE: 1.0})
    encoder = llm.chat_encoder(tokenizer)
    for edit, sample in zip(edits, samples, strict=True):
        assert sample.captions == (edit.reference_captions[0], edit.target_caption)
        assert (sample.answer, sample.template, sample.instruction) == (edit.instruction, template.name, "")
        built = llm.build_prompt(llm.Task.DIFFERENCE, template, sample.captions, "", encoder)
        assert built.token_ids == sample.prompt_ids


def test_the_triplet_llm_trains_on_differences_alone_from_its_own_templates() -> None:
    config = llm.triplet_llm_config(seed=3, context=1024)
    assert config.task_mix == {llm.Task.DIFFERENCE: 1.0}
    assert llm.templates_dir(config) == llm.TRIPLET_TEMPLATES_DIR
    assert llm.templates_dir(llm.LlmTrainingConfig()) == llm.WORLD_TEMPLATES_DIR
    assert llm.Task.DIFFERENCE not in llm.DEFAULT_TASK_MIX
