"""One query's 16 LLM generations (15 per-caption edits + the added objects), together versus one by one.

  VLLM_CPU_KVCACHE_SPACE=1 .venv/bin/python bench/reasoner_bench.py --out bench/results/reasoner.json

The published code sends a query's prompts one after another; the reasoner submits them to the vLLM
engine together, which batches them into the same decoding steps. Both ways run through the production
backend (`VllmBackend`, in-process AsyncLLM, prefix caching on) on the same 16 prompts: 15 edit prompts
(edit_structural, one per caption) and one objects_added prompt (all captions joined). Greedy decoding
gives both ways the same outputs, which the run checks. Headline: sequential / together latency.

Default model: the tiny random LLM of the tiny pack, on the CPU engine (`--profile` points at another
profile whose [reasoner] section names a model folder). A random model rarely emits the stop sequence,
so most generations run to max_tokens: the figures measure the engine, not answer lengths.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from cir_common.config import load_settings
from cir_reasoner.generation import Completion, PreparedPrompt, Sampling
from cir_reasoner.prompts import CAPTION_SEPARATOR
from cir_reasoner.settings import ENV_PREFIX, SECTION, ReasonerSettings
from cir_reasoner.templates import OBJECTS_ADDED_TEMPLATE, TemplateRegistry, TemplateTask
from cir_reasoner.vllm_backend import VllmBackend
from cir_tools.packs.tiny import build_tiny_pack

CAPTIONS = [
    "a man riding a wave on top of a surfboard",
    "a surfer riding a large wave in the ocean",
    "a person on a surfboard in the water",
    "a man in a wetsuit surfing a big wave",
    "a surfer catches a wave near the beach",
    "a surfer in a black wetsuit riding a wave",
    "a man surfing on a sunny day",
    "a person riding a surf board on a wave",
    "a surfer is riding a wave in the sea",
    "a young man surfing in the ocean",
    "a surfer on a white surfboard",
    "a man balancing on a surfboard on a wave",
    "a surfer riding the crest of a wave",
    "a person surfing a small wave",
    "a surfer in the middle of a wave",
]
INSTRUCTION = "is at sunset and has a dog surfing next to him"


def build_prompts(backend: VllmBackend) -> list[PreparedPrompt]:
    templates = TemplateRegistry.load()
    edit = templates.get("edit_structural", TemplateTask.EDIT)
    objects = templates.get(OBJECTS_ADDED_TEMPLATE, TemplateTask.OBJECTS_ADDED)
    texts = [edit.render(caption, INSTRUCTION) for caption in CAPTIONS]
    texts.append(objects.render(CAPTION_SEPARATOR.join(CAPTIONS), INSTRUCTION))
    return [backend.prepare(text) for text in texts]


async def together(
    backend: VllmBackend, prompts: list[PreparedPrompt], sampling: Sampling
) -> list[Completion]:
    return await backend.generate(prompts, sampling, None)


async def one_by_one(
    backend: VllmBackend, prompts: list[PreparedPrompt], sampling: Sampling
) -> list[Completion]:
    results = []
    for prompt in prompts:
        results.extend(await backend.generate([prompt], sampling, None))
    return results


async def measure(backend: VllmBackend, prompts: list[PreparedPrompt], max_tokens: int, repeats: int) -> dict:
    sampling = Sampling(max_tokens=max_tokens)
    await together(backend, prompts, sampling)  # warm-up: prefix cache filled for both ways alike
    times: dict[str, list[float]] = {"together": [], "one_by_one": []}
    outputs: dict[str, list[Completion]] = {}
    steps: dict[str, list[int]] = {"together": [], "one_by_one": []}
    for _ in range(repeats):
        for name, run in (("together", together), ("one_by_one", one_by_one)):
            steps_before = backend.stats.steps
            started = time.perf_counter()
            outputs[name] = await run(backend, prompts, sampling)
            times[name].append(time.perf_counter() - started)
            steps[name].append(backend.stats.steps - steps_before)
    generated = [c.generated_tokens for c in outputs["together"]]
    same = [c.text for c in outputs["together"]] == [c.text for c in outputs["one_by_one"]]
    row = {
        "max_tokens": max_tokens,
        "generations": len(prompts),
        "together_s": [round(t, 4) for t in times["together"]],
        "one_by_one_s": [round(t, 4) for t in times["one_by_one"]],
        "together_median_s": round(statistics.median(times["together"]), 4),
        "one_by_one_median_s": round(statistics.median(times["one_by_one"]), 4),
        "engine_steps_together": steps["together"],
        "engine_steps_one_by_one": steps["one_by_one"],
        "generated_tokens_total": sum(generated),
        "finish_reasons": sorted({c.finish_reason for c in outputs["together"]}),
        "identical_outputs": same,
    }
    row["speedup"] = round(row["one_by_one_median_s"] / row["together_median_s"], 2)
    return row


async def run(settings: ReasonerSettings, max_tokens: list[int], repeats: int) -> dict:
    backend = await asyncio.to_thread(VllmBackend.start, settings)
    try:
        prompts = build_prompts(backend)
        rows = []
        for tokens in max_tokens:
            row = await measure(backend, prompts, tokens, repeats)
            print(
                f"max_tokens {tokens:4d}: together {row['together_median_s']:.3f} s, one by one "
                f"{row['one_by_one_median_s']:.3f} s -> x{row['speedup']} "
                f"(steps {row['engine_steps_together'][0]} vs {row['engine_steps_one_by_one'][0]})",
                flush=True,
            )
            rows.append(row)
        return {
            "model": backend.model.identity,
            "prompt_format": backend.prompt_format,
            "prompt_tokens": [p.token_count for p in prompts],
            "prefix_cache_hit_rate": round(
                backend.stats.prefix_cache_hits / max(backend.stats.prefix_cache_queries, 1), 3
            ),
            "runs": rows,
        }
    finally:
        await backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="bench/results/reasoner.json")
    parser.add_argument(
        "--profile", help="profile.toml with a [reasoner] model folder; default: a fresh tiny pack"
    )
    parser.add_argument("--max-tokens", default="64,700", help="comma-separated max_tokens values to run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        profile = Path(args.profile) if args.profile else build_tiny_pack(Path(tmp) / "pack", echo=None)
        settings = load_settings(
            ReasonerSettings, section=SECTION, env_prefix=ENV_PREFIX, profile=profile, environ={}
        )
        # Eager on CPU: torch.compile would add minutes of start-up and nothing to the comparison.
        settings.enforce_eager = True
        figures = asyncio.run(run(settings, [int(t) for t in args.max_tokens.split(",")], args.repeats))
    results = {
        "command": " ".join(["VLLM_CPU_KVCACHE_SPACE=1", Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **figures,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
