"""bench/gpu_paper_profile.py without a GPU: the dry run's parameter counts against the published ones, the
memory plan, the padded tokenizers, and the fixed output lengths the GPU run gives its random models."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest

from cir_captioner.decoding import DecodingLimits, DecodingOverrides, generate_kwargs, resolve_decoding
from cir_captioner.settings import CaptionerSettings
from cir_common.errors import ConfigError
from cir_reasoner.core import Query, Reasoner, SamplingRequest
from cir_reasoner.generation import BackendModel, Completion, PreparedPrompt, Sampling, estimate_prompt
from cir_reasoner.settings import Backend, PromptFormat, ReasonerSettings

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_paper_profile.py"
# Published parameter counts the dry run must reproduce (the figures), and how close.
PUBLISHED = {"clip": 428e6, "blip2": 7.75e9, "llm": 7.6e9}
TOLERANCE = 0.01


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_paper_profile", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("dry-run") / "counts.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "llm" in done.stdout and "published" in done.stdout  # the counts are printed too
    return json.loads(out.read_text())


def test_dry_run_counts_match_the_published_ones(dry_run: dict) -> None:
    assert (dry_run["mode"], dry_run["shapes"], dry_run["ok"], dry_run["complete"]) == (
        "dry_run",
        "paper",
        True,
        True,
    )
    models = dry_run["models"]
    for name, published in PUBLISHED.items():
        assert models[name]["parameters"] == pytest.approx(published, rel=TOLERANCE), name
    for name in ("clip", "phi", "blip2", "llm"):
        assert models[name]["within_tolerance"] and abs(models[name]["relative_error"]) <= TOLERANCE
    assert models["phi"]["dims"] == [768, 3072, 3072, 768]
    assert models["blip2"]["parts"]["language_model"] == pytest.approx(6.66e9, rel=TOLERANCE)  # OPT-6.7b
    assert (models["blip2"]["vocab_size"], models["llm"]["vocab_size"]) == (50272, 152064)


def test_dry_run_allocates_no_weights(dry_run: dict) -> None:
    # Meta-device models only: 15 B parameters would take 30 GB or more; the imports take about 0.6 GB.
    assert all(entry["allocated_bytes"] == 0 for entry in dry_run["models"].values())
    assert dry_run["peak_rss_mib"] < 3000


def test_dry_run_profile_fits_three_model_services_on_one_gpu(dry_run: dict) -> None:
    plan = dry_run["memory_plan"]
    used = plan["reasoner_gib"] + plan["captioner_gib"] + plan["encoder_gib"] + plan["margin_gib"]
    assert used <= plan["gpu_total_gib"]
    profile = dry_run["profile"]
    assert profile["reasoner"]["gpu_memory_utilization"] == plan["reasoner_gpu_memory_utilization"]
    assert profile["captioner"]["batch_max_images"] == plan["captioner_batch_max_images"]
    assert profile["captioner"]["benchmark_caption_tokens"] == dry_run["output_lengths"]["caption_tokens"]
    assert profile["reasoner"]["benchmark_edit_tokens"] == dry_run["output_lengths"]["edit_tokens"]
    assert profile["encoder"]["clip_model"] == "ViT-L-14"
    # The rest is deploy/profiles/paper.toml's.
    assert profile["captioner"]["default_variant"] == "beam_sample"
    assert profile["reasoner"]["max_model_len"] == 8192


def test_memory_plan_gives_the_reasoner_what_the_others_leave() -> None:
    bench = _bench()
    h100 = bench.memory_plan("H100", 79.6)
    assert h100.reasoner_gpu_memory_utilization == 0.5
    h200 = bench.memory_plan("H200", 139.8)
    assert h200.reasoner_gib <= bench.REASONER_MAX_GIB
    with pytest.raises(SystemExit, match="needs"):
        bench.memory_plan("A100 40GB", 39.4)


def test_padded_vocabulary_decodes_every_id_to_a_word() -> None:
    from cir_tools.packs.tiny_captioner import caption_tokenizer
    from cir_tools.packs.tokenizer import pad_vocabulary

    tokenizer = caption_tokenizer(0)
    trained = len(tokenizer)
    pad_vocabulary(tokenizer, 3000)
    assert len(tokenizer) == 3000
    words = tokenizer.decode(list(range(trained, 3000)), skip_special_tokens=True).split()
    assert len(words) == 3000 - trained and len(set(words)) == len(words)
    pad_vocabulary(tokenizer, 3000)  # already that size: nothing added
    assert len(tokenizer) == 3000
    with pytest.raises(ValueError, match="more than"):
        pad_vocabulary(tokenizer, 100)


def test_captioner_benchmark_length_fixes_every_caption() -> None:
    settings = CaptionerSettings(benchmark_caption_tokens=12)
    limits = DecodingLimits(max_num_captions=64, max_new_tokens=100, max_num_beams=64, max_prompt_chars=256)
    params = resolve_decoding(DecodingOverrides(max_length=30), 0, settings.decoding_defaults(), limits)
    assert (params.max_length, params.min_length) == (12, 12)
    kwargs = generate_kwargs(params)
    assert (kwargs["max_new_tokens"], kwargs["min_new_tokens"]) == (12, 12)
    default = resolve_decoding(DecodingOverrides(), 0, CaptionerSettings().decoding_defaults(), limits)
    assert (default.max_length, default.min_length) == (30, 1)  # off by default
    with pytest.raises(ConfigError, match="BENCHMARK_CAPTION_TOKENS"):
        CaptionerSettings(benchmark_caption_tokens=101)


class _RecordingBackend:
    name = Backend.VLLM
    prompt_format = PromptFormat.COMPLETION
    model = BackendModel(name="recording", revision="", family="test")
    max_context = 8192

    def __init__(self) -> None:
        self.samplings: list[Sampling] = []

    def prepare(self, prompt: str) -> PreparedPrompt:
        return estimate_prompt(prompt)

    async def generate(
        self, prompts: Sequence[PreparedPrompt], sampling: Sampling, deadline: float | None
    ) -> list[Completion]:
        self.samplings.append(sampling)
        return [Completion(text="a dog", finish_reason="length")] * len(prompts)

    def engine_counters(self) -> None:
        return None

    async def close(self) -> None:
        pass


async def _samplings(settings: ReasonerSettings) -> list[Sampling]:
    backend = _RecordingBackend()
    reasoner = Reasoner(settings, backend=backend)
    await reasoner.load()
    try:
        inputs = reasoner.check_inputs(["a man on a surfboard"], "at sunset")
        query = Query(inputs, "", SamplingRequest(), bypass_cache=True, time_remaining_s=None)
        await reasoner.edit_captions(query, None)
        await reasoner.infer_added_objects(query, None)
    finally:
        await reasoner.close()
    return backend.samplings


async def test_reasoner_benchmark_lengths_fix_each_task() -> None:
    edit, objects = await _samplings(ReasonerSettings(benchmark_edit_tokens=30, benchmark_objects_tokens=15))
    assert (edit.max_tokens, edit.min_tokens, objects.max_tokens, objects.min_tokens) == (30, 30, 15, 15)
    assert edit.cache_params()["min_tokens"] == 30
    edit, objects = await _samplings(ReasonerSettings())
    assert (edit.min_tokens, objects.min_tokens, edit.max_tokens) == (0, 0, 700)  # off by default
    assert "min_tokens" not in edit.cache_params()  # cache keys as before


@pytest.mark.parametrize(
    ("fields", "refusal"),
    [
        ({"benchmark_edit_tokens": 701}, "BENCHMARK_EDIT_TOKENS"),
        ({"benchmark_objects_tokens": -1}, "BENCHMARK_OBJECTS_TOKENS"),
        ({"benchmark_edit_tokens": 30, "backend": Backend.TRANSFORMERS}, "vllm backend only"),
    ],
)
def test_reasoner_benchmark_lengths_are_checked(fields: dict, refusal: str) -> None:
    with pytest.raises(ConfigError, match=refusal):
        ReasonerSettings(**fields)
