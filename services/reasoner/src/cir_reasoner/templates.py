"""Prompt templates: TOML data files, loaded by name, versioned.

A template is a list of blocks joined by blank lines: free text (`text = ...`) or a worked example
(`captions`, `instruction`, `answer`, and an optional `aspect` heading). The query is appended the same
way as an example without its answer, so the prompt ends with the answer cue:

    Image Content: <captions>
    Instruction: <T>
    Edited Description:

A difference template (InstructCIR) fills the same two slots with caption A and caption B, under its own
labels (`content_label`, `instruction_label`). `before_answer`, when a template sets it, is a line between
the query and the answer cue: the answer rules of a prompt that states them after its inputs.

The built-in templates ship in the package's `templates/` folder; files or folders named by the
`template_paths` setting add more (a user file may replace a built-in of the same name).
"""

from __future__ import annotations

import hashlib
import logging
import re
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

from cir_common.errors import ConfigError, InvalidArgument, NotFound

log = logging.getLogger(__name__)


class TemplateTask(StrEnum):
    """What a template's prompt asks the model for: the `task` key of a template file."""

    EDIT = "edit"  # the edited caption (EditCaptions)
    OBJECTS_ADDED = "objects_added"  # the objects most likely added (InferAddedObjects)
    DIFFERENCE = "difference"  # the reformulation text from image A to image B (DescribeDifferences)


OBJECTS_ADDED_TEMPLATE = "objects_added"
DIFFERENCE_TEMPLATE = "difference_instructcir"

CONTENT_LABEL = "Image Content:"
INSTRUCTION_LABEL = "Instruction:"
DEFAULT_ANSWER_LABELS = {
    TemplateTask.EDIT: "Edited Description:",
    TemplateTask.OBJECTS_ADDED: "Objects most likely added:",
    TemplateTask.DIFFERENCE: "Difference:",
}

_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# How much of an unknown template name an error message repeats.
_NAME_SHOWN = 80
_TOP_KEYS = {
    "name",
    "version",
    "task",
    "description",
    "answer_label",
    "content_label",
    "instruction_label",
    "before_answer",
    "blocks",
}
_EXAMPLE_KEYS = {"captions", "instruction", "answer"}


@dataclass(frozen=True)
class Example:
    captions: str
    instruction: str
    answer: str
    aspect: str = ""


Block = str | Example


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    task: TemplateTask
    description: str
    answer_label: str
    content_label: str
    instruction_label: str
    blocks: tuple[Block, ...]
    source: str
    builtin: bool
    # Of the file's bytes: goes into cache keys beside the version, so an edited file whose version
    # was not bumped still cannot serve answers cached for its old text.
    sha256: str
    # A line between the query and the answer cue; "" = none.
    before_answer: str = ""

    def render(self, captions: str, instruction: str) -> str:
        """The full prompt for one query: every block, then the query ending with the answer cue."""
        parts = [self._render_block(block) for block in self.blocks]
        rules = f"{self.before_answer}\n" if self.before_answer else ""
        parts.append(
            f"{self.content_label} {captions}\n{self.instruction_label} {instruction}\n"
            f"{rules}{self.answer_label}"
        )
        return "\n\n".join(parts)

    def _render_block(self, block: Block) -> str:
        if isinstance(block, str):
            return block
        heading = f'"{block.aspect}"\n' if block.aspect else ""
        return (
            f"{heading}{self.content_label} {block.captions}\n{self.instruction_label} {block.instruction}\n"
            f"{self.answer_label} {block.answer}"
        )


def load_template_file(path: Path, *, builtin: bool = False) -> PromptTemplate:
    """Parse and check one template file; any problem is a ConfigError naming the file and the fix."""
    try:
        raw = path.read_bytes()
        data = tomllib.loads(raw.decode("utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read prompt template {path}: {error}") from error
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"prompt template {path} is not valid UTF-8 TOML: {error}") from error

    where = f"prompt template {path}"
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_TOP_KEYS))}"
        )
    name = _required_str(data, "name", where)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name {name!r} must be 1-64 characters of a-z, 0-9, '_', '.', '-'")
    task_name = _required_str(data, "task", where)
    try:
        task = TemplateTask(task_name)
    except ValueError:
        raise ConfigError(f"{where}: task {task_name!r} must be one of {', '.join(TemplateTask)}") from None
    blocks = data.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        raise ConfigError(f"{where} needs at least one [[blocks]] table (text or example)")
    return PromptTemplate(
        name=name,
        version=_required_str(data, "version", where),
        task=task,
        description=_optional_str(data, "description", where, ""),
        answer_label=_optional_str(data, "answer_label", where, DEFAULT_ANSWER_LABELS[task]),
        content_label=_optional_str(data, "content_label", where, CONTENT_LABEL),
        instruction_label=_optional_str(data, "instruction_label", where, INSTRUCTION_LABEL),
        blocks=tuple(_parse_block(block, f"{where}, blocks[{i}]") for i, block in enumerate(blocks)),
        source=str(path),
        builtin=builtin,
        sha256=hashlib.sha256(raw).hexdigest(),
        before_answer=_optional_str(data, "before_answer", where, ""),
    )


def _parse_block(block: Any, where: str) -> Block:
    if not isinstance(block, dict):
        raise ConfigError(f"{where} must be a table")
    if set(block) == {"text"}:
        text = block["text"]
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: text must be a non-empty string")
        return text.strip("\n")
    keys = set(block)
    if not keys >= _EXAMPLE_KEYS or keys - _EXAMPLE_KEYS - {"aspect"}:
        raise ConfigError(
            f"{where} must be either {{text}} or an example {{captions, instruction, answer[, aspect]}}; "
            f"got keys {', '.join(sorted(keys))}"
        )
    values = {key: block[key] for key in keys}
    for key, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string")
    return Example(
        captions=values["captions"].strip(),
        instruction=values["instruction"].strip(),
        answer=values["answer"].strip(),
        aspect=values.get("aspect", "").strip(),
    )


def _required_str(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} needs a non-empty string {key!r}")
    return value.strip()


def _optional_str(data: dict[str, Any], key: str, where: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string")
    return value.strip()


def builtin_template_files() -> list[Path]:
    folder = resources.files("cir_reasoner") / "templates"
    return sorted(Path(str(entry)) for entry in folder.iterdir() if entry.name.endswith(".toml"))


def _expand(paths: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for entry in paths:
        path = Path(entry).expanduser()
        if path.is_dir():
            found = sorted(path.glob("*.toml"))
            if not found:
                raise ConfigError(
                    f"template folder {path} holds no *.toml file (CIR_REASONER_TEMPLATE_PATHS)"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"template path {path} does not exist (CIR_REASONER_TEMPLATE_PATHS)")
    return files


class TemplateRegistry:
    """Every template the server knows, by name."""

    def __init__(self, templates: Sequence[PromptTemplate]) -> None:
        self._templates: dict[str, PromptTemplate] = {}
        for template in templates:
            previous = self._templates.get(template.name)
            if previous is not None and not previous.builtin:
                raise ConfigError(
                    f"prompt template name {template.name!r} is defined twice: {previous.source} and "
                    f"{template.source}; rename one"
                )
            if previous is not None:
                log.info(
                    "prompt template %r from %s replaces the built-in one", template.name, template.source
                )
            self._templates[template.name] = template

    @classmethod
    def load(cls, user_paths: Sequence[str] = ()) -> TemplateRegistry:
        builtins = [load_template_file(path, builtin=True) for path in builtin_template_files()]
        users = [load_template_file(path) for path in _expand(user_paths)]
        return cls([*builtins, *users])

    def all(self) -> list[PromptTemplate]:
        return [self._templates[name] for name in sorted(self._templates)]

    def names(self, task: TemplateTask | None = None) -> list[str]:
        return [t.name for t in self.all() if task is None or t.task == task]

    def get(self, name: str, task: TemplateTask) -> PromptTemplate:
        """The template `name` for `task`: NOT_FOUND lists the known names; wrong task: INVALID_ARGUMENT."""
        template = self._templates.get(name)
        if template is None:
            # The name is the caller's text: echoed cut, so a huge one cannot overflow the error trailer.
            shown = name if len(name) <= _NAME_SHOWN else name[:_NAME_SHOWN] + "..."
            raise NotFound(
                f"unknown prompt template {shown!r}; known: {', '.join(self.names())} "
                "(add your own with CIR_REASONER_TEMPLATE_PATHS)"
            )
        if template.task != task:
            raise InvalidArgument(
                f"prompt template {name!r} is a {template.task} template, not {task}; "
                f"{task} templates: {', '.join(self.names(task)) or 'none'}"
            )
        return template
