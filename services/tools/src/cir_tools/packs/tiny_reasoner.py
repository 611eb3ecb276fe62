"""The reasoner's part of the tiny model pack: a random Llama with a trained tokenizer and a chat template.

Sized for the real prompts rather than for speed: the edit prompts run to ~1.5k tokens with a real LLM
tokenizer, so the context is 8192 positions and the tokenizer is trained on the reasoner's prompt templates
themselves plus captions and instruction-like English, so that those
prompts do not explode into single bytes. head_dim is 32 because vLLM's CPU attention rejects 16 on AVX2.
`llm_tokenizer` and `write_causal_lm` serve any causal LM shape (the paper-shaped pack's 7 B one too).
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import random
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from cir_tools.packs.common import SHARD_SIZE, random_model, special_token_ids
from cir_tools.packs.tokenizer import synthetic_captions, train_bpe_tokenizer

if TYPE_CHECKING:
    from transformers import LlamaConfig, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerFast

TINY_LLM_CONTEXT = 8192
_TOKENIZER_VOCAB = 4000
_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# Role markers are special tokens; every turn ends with EOS so generation stops at the end of a reply.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|assistant|>\n' }}{%- endif %}"
)
# The templates are repeated so that their wording gets merges ahead of the synthetic text.
_TEMPLATE_WEIGHT = 5

# Our own wording of the kinds of text the reasoner's prompts contain (no published prompt is copied).
_INSTRUCTION_PARAGRAPHS = (
    "Below you get the content of a picture and a change that someone wants. Write how the picture looks "
    'after the change. The content comes after "Image Content:", the change after "Instruction:", and '
    'your answer starts with "Edited Description:".',
    "Answer with a single description. Keep it simple, short and complete, and leave out anything that "
    "neither the picture nor the change mentions.",
    "A change can ask for a number of things, add or remove an object, compare two states, move something, "
    "swap the background or the viewpoint, or combine several of these. A few worked examples follow.",
    "Say only what the changed picture shows, in as few words as possible, and do not make anything up.",
    "From the picture content and the change, name the objects that the new picture most probably gains. "
    'Give a short list separated by commas that starts with "Objects most likely added:".',
    "You are a careful assistant. Reply briefly, in plain English, on one line.",
    "Keep the main subject, alter only what the change asks for, and leave the scene, the style, the colors "
    "and the point of view as they were unless told otherwise.",
    "For clothing, describe the garment: its color, pattern, sleeves, neckline, length, fit and material, "
    "for example a sleeveless red dress with a floral print, or a loose gray shirt with long sleeves.",
)
_EDIT_VERBS = ("change", "replace", "remove", "add", "make", "turn", "show", "put", "move", "swap")
_EDIT_OBJECTS = (
    "the background to a beach",
    "the dog with a cat",
    "the people from the street",
    "a hat on the man",
    "the car red",
    "the sky into a sunset",
    "two more birds",
    "the bench next to the tree",
    "the shirt for a jacket",
    "the picture from above",
    "the dress shorter and darker",
    "a crowd behind the player",
)
_OBJECT_LISTS = (
    "crowd of people, fence",
    "a dog of a different breed, a jolly roger",
    "umbrella, sand, waves",
    "snow, mountains",
    "leash, collar",
    "vase of flowers, table",
    "helmet, gloves",
    "stripes, long sleeves",
)


def instruction_corpus(count: int, seed: int = 0) -> Iterator[str]:
    """Prompt-like English: instruction paragraphs and filled-in question/answer blocks."""
    rng = random.Random(seed)
    captions = synthetic_captions(count, seed=seed + 1)
    for index, caption in enumerate(captions):
        yield _INSTRUCTION_PARAGRAPHS[index % len(_INSTRUCTION_PARAGRAPHS)]
        instruction = f"{rng.choice(_EDIT_VERBS)} {rng.choice(_EDIT_OBJECTS)}"
        query = f"Image Content: {caption}\nInstruction: {instruction}\n"
        yield f"{query}Edited Description: {caption}, {instruction}"
        yield (
            f"Image Content: {caption}\nInstruction: {instruction}\nObjects most likely added: "
            + rng.choice(_OBJECT_LISTS)
        )


# Standard-library modules whose docstrings serve as a general English corpus: nothing can be
# downloaded, and hand-written word lists leave ordinary prose splitting into bytes. The text depends on
# the Python version, so a pack is reproducible for one interpreter version, not across versions.
_DOC_MODULES = (
    "argparse asyncio calendar collections concurrent.futures configparser contextlib csv dataclasses "
    "datetime decimal difflib doctest email.message enum fractions functools gettext glob heapq "
    "http.client imaplib inspect io ipaddress itertools json locale logging multiprocessing os "
    "pathlib pickle pprint queue random re sched shutil smtplib socket sqlite3 statistics string "
    "subprocess tarfile tempfile textwrap threading timeit traceback typing unittest urllib.request "
    "warnings weakref zipfile"
)


def stdlib_docstrings() -> Iterator[str]:
    """Docstrings of a fixed list of standard-library modules and their public classes and functions."""
    seen: set[str] = set()
    for name in _DOC_MODULES.split():
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for doc in _module_docstrings(module):
            if doc not in seen:
                seen.add(doc)
                yield doc


def _module_docstrings(module: ModuleType) -> list[str]:
    docs = []
    with warnings.catch_warnings():
        # Touching deprecated members (typing.io, ...) warns; reading their docstring is harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        members = [getattr(module, attr, None) for attr in sorted(dir(module)) if not attr.startswith("_")]
        for obj in [module, *members]:
            if obj is module or inspect.isclass(obj) or inspect.isroutine(obj):
                doc = inspect.getdoc(obj)
                if doc:
                    docs.append(doc)
    return docs


def template_texts(templates_dir: Path | None = None) -> list[str]:
    """The text of prompt template files (*.toml, *.txt): the reasoner's shipped ones by default.

    `templates_dir` names another folder (a missing one has none: tests build a tokenizer without)."""
    if templates_dir is None:
        from cir_reasoner.templates import builtin_template_files

        files = builtin_template_files()
        if not files:  # the tokenizer would split every prompt into bytes: never build that silently
            raise RuntimeError("cir_reasoner ships no prompt templates; the installed package is incomplete")
    elif templates_dir.is_dir():
        files = sorted(itertools.chain(templates_dir.glob("*.toml"), templates_dir.glob("*.txt")))
    else:
        files = []
    return [path.read_text(encoding="utf-8") for path in files]


def llm_tokenizer(seed: int = 0, templates_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """The reasoner's tokenizer: byte-level BPE trained on the prompt templates, captions, instruction-like
    text and standard-library docstrings, with role tokens and a chat template; pads on the left."""
    corpus = itertools.chain(
        template_texts(templates_dir) * _TEMPLATE_WEIGHT,
        synthetic_captions(3000, seed=seed),
        instruction_corpus(1500, seed=seed),
        stdlib_docstrings(),
    )
    return chat_tokenizer(corpus, _TOKENIZER_VOCAB, TINY_LLM_CONTEXT)


def chat_tokenizer(corpus: Iterable[str], vocab_size: int, context: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, with the role tokens and the chat template of the
    tiny LLMs, padding on the left: the random pack's and the trained world model's alike."""
    return train_bpe_tokenizer(
        corpus,
        vocab_size,
        extra_specials=_ROLE_TOKENS,
        model_max_length=context,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def tiny_llama_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    layers: int = 2,
    heads: int = 2,
    context: int = TINY_LLM_CONTEXT,
) -> LlamaConfig:
    """A small Llama config for `tokenizer`; head_dim = hidden_size / heads must be 32 or 64 for vLLM's CPU
    attention on AVX2."""
    from transformers import LlamaConfig

    if hidden_size % heads or hidden_size // heads not in (32, 64):
        raise ValueError(f"head_dim {hidden_size}/{heads} must be 32 or 64 (vLLM CPU attention)")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        **special_token_ids(tokenizer),
    )


def build_tiny_llm(out_dir: Path, seed: int = 0, templates_dir: Path | None = None) -> Path:
    """Write a tiny Llama folder (model, tokenizer, chat template) to `out_dir` and return it."""
    from transformers import LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = llm_tokenizer(seed, templates_dir)
    return write_causal_lm(out_dir, LlamaForCausalLM, tiny_llama_config(tokenizer), tokenizer, seed)


def write_causal_lm(
    out_dir: Path,
    model_class: Any,
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    *,
    device: str | None = None,
    init_dtype: torch.dtype | None = None,
) -> Path:
    """Write `model_class(config)` with random weights drawn from `seed` (on `device`, in `init_dtype`) and
    `tokenizer` to `out_dir` as a published LLM folder; return the folder."""
    model = random_model(model_class, config, seed, device=device, dtype=init_dtype)
    return save_causal_lm(out_dir, model, tokenizer)


def save_causal_lm(out_dir: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> Path:
    """Write `model` (converted to bfloat16 in place) and `tokenizer` to `out_dir` as a published LLM
    folder; return the folder."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # bfloat16 on disk like published LLMs: vLLM then loads it as is instead of downcasting float32.
    model.to(torch.bfloat16)
    model.save_pretrained(str(out_dir), max_shard_size=SHARD_SIZE)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir
