"""The tiny LLM loads through transformers (the in-process backend) and generates; its context fits
real prompts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from cir_common.errors import ConfigError
from cir_reasoner.model_loading import LoadedCausalLM, load_causal_lm, vllm_engine_args
from cir_tools.packs.tiny_reasoner import build_tiny_llm, template_texts

# Not in the tokenizer's training text: an edit prompt in other words, to measure how English splits.
HELD_OUT = (
    "You will receive a short description of a photograph and a request written by a person who wants to "
    "see a slightly different picture. Think about which parts of the scene should stay the same and "
    "which parts the request changes. Then write one sentence that describes the new picture as if you "
    "were looking at it. Do not explain your reasoning, do not repeat the request, and do not add objects"
    " that nobody asked for. If the request asks to remove something, the new description must not "
    "mention it. A woman in a yellow raincoat is walking her puppy across a quiet bridge while the "
    "evening lights reflect on the river below."
)


@pytest.fixture(scope="module")
def llm(tiny_profile: dict[str, Any]) -> LoadedCausalLM:
    return load_causal_lm(tiny_profile["reasoner"]["model"], "cpu", "auto")


def _chat(llm: LoadedCausalLM, content: str) -> str:
    text = llm.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    assert isinstance(text, str)
    return text


def test_loads_with_left_padding_and_chat_template(llm: LoadedCausalLM, tiny_profile: dict[str, Any]) -> None:
    folder = Path(tiny_profile["reasoner"]["model"])
    weights = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert llm.identity == f"{folder.name}@sha256:{weights}"
    assert llm.has_chat_template
    assert llm.tokenizer.padding_side == "left"
    assert llm.max_context == tiny_profile["reasoner"]["max_model_len"] == 8192
    assert llm.model.config.head_dim == 32  # vLLM's CPU attention needs 32 or 64 on AVX2
    assert llm.dtype == torch.float32 and not llm.model.training


def test_chat_template_marks_roles_and_ends_turns(llm: LoadedCausalLM) -> None:
    text = _chat(llm, "Instruction: make the dog red")
    assert text == "<s><|user|>\nInstruction: make the dog red</s>\n<|assistant|>\n"
    ids = llm.tokenizer(text, add_special_tokens=False).input_ids
    assert ids[0] == llm.tokenizer.bos_token_id
    assert llm.tokenizer.convert_tokens_to_ids("<|assistant|>") in ids


def test_batched_greedy_generation_matches_single_prompts(llm: LoadedCausalLM) -> None:
    prompts = [_chat(llm, "Image Content: a dog on a beach\nInstruction: make it a cat"), _chat(llm, "hi")]
    batch = llm.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    assert batch["attention_mask"][1, 0] == 0  # the short prompt is padded on the left
    with torch.no_grad():
        pad = llm.tokenizer.pad_token_id
        together = llm.model.generate(**batch, do_sample=False, max_new_tokens=6, pad_token_id=pad)
        alone = llm.tokenizer(prompts[1:], return_tensors="pt", add_special_tokens=False)
        single = llm.model.generate(**alone, do_sample=False, max_new_tokens=6, pad_token_id=pad)
    width = batch["input_ids"].shape[1]
    assert together.shape[0] == 2 and width < together.shape[1] <= width + 6
    new_in_batch = together[1, width:]
    new_alone = single[0, alone["input_ids"].shape[1] :]
    assert torch.equal(new_in_batch[: new_alone.shape[0]], new_alone)


def test_english_prompts_stay_compact(llm: LoadedCausalLM) -> None:
    ratio = len(llm.tokenizer(HELD_OUT).input_ids) / len(HELD_OUT.split())
    assert ratio < 2.0, ratio
    # A prompt of ~1,500 words (the size of the few-shot edit prompts) leaves room for 700 new tokens.
    long_prompt = " ".join([HELD_OUT] * 14)
    assert len(long_prompt.split()) > 1400
    assert len(llm.tokenizer(_chat(llm, long_prompt), add_special_tokens=False).input_ids) < 8192 - 700


def test_shipped_prompt_templates_tokenize_compactly(llm: LoadedCausalLM) -> None:
    texts = template_texts()
    assert len(texts) >= 4, "cir_reasoner ships the objects_added and three edit templates"
    for text in texts:
        assert len(llm.tokenizer(text).input_ids) < 2 * len(text.split())


def test_prompt_templates_are_part_of_the_tokenizer_corpus(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    text = "Zyxwvu quorbl flimflam: describe the snorkelwhale. " * 3
    (templates / "edit.toml").write_text(f'text = """{text}"""\n', encoding="utf-8")
    with_templates = build_tiny_llm(tmp_path / "with", templates_dir=templates)
    without = build_tiny_llm(tmp_path / "without", templates_dir=tmp_path / "none")
    from transformers import AutoTokenizer

    count_with = len(AutoTokenizer.from_pretrained(with_templates)(text).input_ids)
    count_without = len(AutoTokenizer.from_pretrained(without)(text).input_ids)
    assert count_with < count_without


def test_vllm_engine_args(tiny_profile: dict[str, Any], tmp_path: Path) -> None:
    folder = tiny_profile["reasoner"]["model"]
    args = vllm_engine_args(folder, 8192, enforce_eager=True)
    assert args["model"] == args["tokenizer"] == str(Path(folder).resolve())
    assert args["max_model_len"] == 8192 and args["enforce_eager"] is True
    with pytest.raises(ConfigError, match="exceeds the 8192 positions"):
        vllm_engine_args(folder, 16384)
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        vllm_engine_args(str(tmp_path), 512)
    with pytest.raises(ConfigError, match="does not exist"):
        vllm_engine_args(str(tmp_path / "absent"), 512)


def test_a_missing_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        load_causal_lm(str(tmp_path / "absent"), "cpu", "auto")
    with pytest.raises(ConfigError, match="could not load the reasoner LLM"):
        load_causal_lm(str(tmp_path), "cpu", "auto")
