"""Prompt templates as data files: the built-ins, user files, checks, and the prompt budget planning."""

from __future__ import annotations

from pathlib import Path

import pytest

from cir_common.errors import ConfigError, InvalidArgument, NotFound
from cir_reasoner import prompts
from cir_reasoner.generation import PreparedPrompt
from cir_reasoner.service import ReasonerServicer
from cir_reasoner.settings import ReasonerSettings
from cir_reasoner.templates import Example, TemplateRegistry, load_template_file

BUILTINS = {
    "difference_instructcir": "difference",
    "edit_contextual": "edit",
    "edit_structural": "edit",
    "edit_structural_fashion": "edit",
    "objects_added": "objects_added",
}
ASPECTS = [
    "cardinality",
    "addition",
    "negation",
    "direct addressing",
    "compare & change",
    "comparative",
    "conjunction",
    "spatial relations & background",
    "viewpoint",
]
USER_TEMPLATE = """
name = "short_edit"
version = "7"
task = "edit"
description = "A user's edit prompt."
answer_label = "Target:"

[[blocks]]
text = "Describe the target photo."

[[blocks]]
aspect = "addition"
captions = "a cat"
instruction = "add a hat"
answer = "a cat in a hat"
"""


def _write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_builtins_load_with_their_tasks_and_versions() -> None:
    registry = TemplateRegistry.load()
    assert {t.name: t.task for t in registry.all()} == BUILTINS
    for template in registry.all():
        assert template.builtin and template.version == "1" and template.description
        assert len(template.sha256) == 64


def test_objects_added_is_the_cvsi_prompt_with_the_released_query() -> None:
    template = TemplateRegistry.load().get("objects_added", "objects_added")
    prompt = template.render("a dog on a beach, a dog running", "make it night")
    assert prompt.startswith(
        "I have an image. Given an instruction to edit the image, carefully predict the objects"
    )
    assert "Objects most likely added: [Noun phrase with relevant details from the instruction]\n" in prompt
    assert (
        "Example:\n\nImage Content: A man is holding a large fish on a stick.\n"
        "Instruction: Add a crowd of people watching behind a fence.\n"
        "Objects most likely added: crowd of people, fence\n\n"
        "Image Content: The dog is wearing a red hat.\n"
        "Instruction: has a dog of a different breed and shows a jolly roger.\n"
        "Objects most likely added: a dog of a different breed, a jolly roger\n\n"
        "Image Content: a dog on a beach, a dog running\nInstruction: make it night\n"
        "Objects most likely added:"
    ) in prompt
    assert prompt.endswith("Objects most likely added:")


@pytest.mark.parametrize("name", ["edit_structural", "edit_structural_fashion"])
def test_structural_edit_prompts_have_one_example_per_aspect_then_more(name: str) -> None:
    template = TemplateRegistry.load().get(name, "edit")
    examples = [b for b in template.blocks if isinstance(b, Example)]
    assert [e.aspect for e in examples if e.aspect] == ASPECTS
    assert len([e for e in examples if not e.aspect]) >= 10
    prompt = template.render("a red dress", "is blue")
    for aspect in ASPECTS:
        assert aspect in prompt.split("Here is one example of each kind:")[0]
    assert '"viewpoint"\nImage Content: ' in prompt
    assert prompt.endswith("Image Content: a red dress\nInstruction: is blue\nEdited Description:")


def test_contextual_edit_prompt_has_its_preamble_and_few_shot_examples() -> None:
    template = TemplateRegistry.load().get("edit_contextual", "edit")
    examples = [b for b in template.blocks if isinstance(b, Example)]
    assert len(examples) >= 20 and not any(e.aspect for e in examples)
    prompt = template.render("a cat", "make it a dog")
    preamble = prompt.split("\n\n")[0]
    for cue in ('"Image Content:"', '"Instruction:"', '"Edited Description:"', "as short as"):
        assert cue in preamble
    assert prompt.count("\nEdited Description: ") == len(examples)


def test_a_user_file_renders_with_its_own_labels(tmp_path: Path) -> None:
    template = load_template_file(_write(tmp_path, "mine.toml", USER_TEMPLATE))
    assert (template.name, template.version, template.task, template.builtin) == (
        "short_edit",
        "7",
        "edit",
        False,
    )
    assert template.render("a dog", "add a ball") == (
        "Describe the target photo.\n\n"
        '"addition"\nImage Content: a cat\nInstruction: add a hat\nTarget: a cat in a hat\n\n'
        "Image Content: a dog\nInstruction: add a ball\nTarget:"
    )


def test_user_files_and_folders_join_the_builtins(tmp_path: Path) -> None:
    _write(tmp_path / "folder", "a.toml", USER_TEMPLATE)
    _write(tmp_path / "folder", "b.toml", USER_TEMPLATE.replace("short_edit", "other_edit"))
    single = _write(
        tmp_path,
        "objects.toml",
        USER_TEMPLATE.replace('"short_edit"', '"objects_added"').replace(
            'task = "edit"', 'task = "objects_added"'
        ),
    )
    registry = TemplateRegistry.load([str(tmp_path / "folder"), str(single)])
    assert registry.names() == sorted([*BUILTINS, "short_edit", "other_edit"])
    assert registry.names("objects_added") == ["objects_added"]
    # A user file replaces the built-in of the same name.
    replaced = registry.get("objects_added", "objects_added")
    assert not replaced.builtin and replaced.version == "7"


def test_a_missing_name_is_not_found_with_the_known_names() -> None:
    registry = TemplateRegistry.load()
    with pytest.raises(NotFound) as caught:
        registry.get("edit_cirr", "edit")
    assert "unknown prompt template 'edit_cirr'" in caught.value.message
    for name in BUILTINS:
        assert name in caught.value.message
    with pytest.raises(InvalidArgument, match="is a objects_added template, not edit"):
        registry.get("objects_added", "edit")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('version = "7"\n', ""), "needs a non-empty string 'version'"),
        (('task = "edit"', 'task = "caption"'), "task 'caption' must be one of"),
        (('name = "short_edit"', 'name = "Short Edit"'), "must be 1-64 characters"),
        (('answer = "a cat in a hat"', ""), "must be either {text} or an example"),
        (('description = "A user\'s edit prompt."', 'descripton = "typo"'), "unknown key(s) descripton"),
        (("[[blocks]]", "[[block]]"), "unknown key(s) block"),
        (('text = "Describe the target photo."', 'text = "  "'), "text must be a non-empty string"),
    ],
)
def test_a_broken_file_is_a_config_error_that_names_it(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    path = _write(tmp_path, "broken.toml", USER_TEMPLATE.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_template_file(path)
    assert message in caught.value.message and str(path) in caught.value.message


def test_bad_paths_and_duplicate_user_names_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TemplateRegistry.load([str(tmp_path / "absent.toml")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no"):
        TemplateRegistry.load([str(tmp_path / "empty")])
    first = _write(tmp_path / "one", "a.toml", USER_TEMPLATE)
    second = _write(tmp_path / "two", "a.toml", USER_TEMPLATE)
    with pytest.raises(ConfigError, match="defined twice"):
        TemplateRegistry.load([str(first), str(second)])


def test_the_service_refuses_an_unknown_default_edit_template() -> None:
    with pytest.raises(ConfigError, match="DEFAULT_EDIT_TEMPLATE: unknown prompt template 'edit_cirr'"):
        ReasonerServicer(ReasonerSettings(default_edit_template="edit_cirr"))
    with pytest.raises(ConfigError, match="is a objects_added template"):
        ReasonerServicer(ReasonerSettings(default_edit_template="objects_added"))
    with pytest.raises(ConfigError, match=r"BACKEND='llama\.cpp'"):
        ReasonerServicer(ReasonerSettings(backend="llama.cpp"))


def _words(text: str) -> PreparedPrompt:
    # A whitespace "tokenizer": exact and independent of any model, enough to check the planning.
    return PreparedPrompt(text=text, token_count=len(text.split()))


def test_joined_keeps_the_longest_prefix_of_captions_that_fits(tmp_path: Path) -> None:
    template = load_template_file(_write(tmp_path, "mine.toml", USER_TEMPLATE))
    captions = [f"caption number {i}" for i in range(10)]
    fitting = len(template.render(", ".join(captions[:4]), "add a ball").split())
    plan = prompts.joined(template, captions, "add a ball", _words, prompts.Budget(fitting, "test"))
    assert (plan.captions_used, plan.truncated) == (4, True)
    assert plan.items[0].caption_indices == (0, 1, 2, 3)
    assert plan.items[0].prompt.token_count == fitting
    roomy = prompts.joined(template, captions, "add a ball", _words, prompts.Budget(10_000, "test"))
    assert (roomy.captions_used, roomy.truncated, roomy.items[0].captions) == (10, False, tuple(captions))
    with pytest.raises(InvalidArgument, match=r"over the budget of 5 \(the setting\)"):
        prompts.joined(template, captions, "add a ball", _words, prompts.Budget(5, "the setting"))


def test_per_caption_drops_the_captions_whose_prompt_does_not_fit(tmp_path: Path) -> None:
    template = load_template_file(_write(tmp_path, "mine.toml", USER_TEMPLATE))
    captions = ["a dog", "a very very very long caption indeed", "a cat"]
    budget = prompts.Budget(len(template.render("a dog", "add a ball").split()), "test")
    plan = prompts.per_caption(template, captions, "add a ball", _words, budget)
    assert [item.caption_indices for item in plan.items] == [(0,), (2,)]
    assert (plan.captions_used, plan.truncated) == (2, True)
    first = prompts.first_caption(template, captions, "add a ball", _words, budget)
    assert (first.items[0].caption_indices, first.captions_used, first.truncated) == ((0,), 1, False)
