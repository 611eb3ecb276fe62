"""The world pack's stages (what each trains, on which world data, with which recipe) and its profile.

Budgets are fixed step counts, so a build is the same bytes on every run of one machine and library set;
they are sized so that the whole build stays within minutes on two CPU cores (README "The world pack").
The mapping networks are trained on the CLIP of the first stage, loaded back through the encoder's own
loader, exactly as the service will load it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cir_common.vocabulary import CAPTIONER, ENCODER, REASONER, RETRIEVER
from cir_tools.packs.world import Stage
from cir_tools.training.progress import Progress

SEED = 0
CLIP_DIR = "clip"
MAPPING_DIR = "mapping"
CAPTIONER_DIR = "captioner"
LLM_DIR = "llm"
TRIPLET_LLM_DIR = "triplet-llm"
TEMPLATES_DIR = "templates"
LINCIR_FILE = "phi-lincir-world.pt"
SEARLE_FILE = "phi-searle-world.pt"
PIC2WORD_FILE = "pic2word-world.pt"
# The LLM's context: 15 joined world captions and a world template take ~600 tokens.
LLM_CONTEXT = 2048
# World answers are a caption (under 40 tokens); the papers' 700 would only shrink the prompt budget.
LLM_MAX_OUTPUT_TOKENS = 96


@dataclass(frozen=True)
class EncoderRecipe:
    clip_images: int = 3000
    clip_steps: int = 400
    clip_batch_size: int = 64
    phi_texts: int = 3000
    lincir_steps: int = 250
    mapping_images: int = 2000
    searle_steps: int = 150
    pic2word_steps: int = 150
    seed: int = SEED


def _captioner_recipe() -> Any:
    from cir_tools.training.blip2 import WORLD_RECIPE

    return WORLD_RECIPE


def _llm_recipe() -> Any:
    from cir_tools.training.llm import LlmTrainingConfig

    return LlmTrainingConfig(seed=SEED, context=LLM_CONTEXT)


@dataclass(frozen=True)
class WorldRecipe:
    """Every stage's recipe: the encoder's here, the captioner's and the LLM's their trainers' dataclasses
    (`cir_tools.training.blip2.Blip2Recipe`, `cir_tools.training.llm.LlmTrainingConfig`)."""

    encoder: EncoderRecipe = field(default_factory=EncoderRecipe)
    captioner: Any = field(default_factory=_captioner_recipe)
    llm: Any = field(default_factory=_llm_recipe)


def _within(progress: Progress, done: int, total: int) -> Progress:
    """A trainer's progress as a part of a stage's bar of `total` steps, after the `done` steps before it."""
    return lambda step, _, loss: progress(done + step, total, loss)


def build_clip(recipe: EncoderRecipe, folder: Path, root: Path, progress: Progress) -> None:
    from cir_tools.training.clip import ClipTrainingSettings, save_clip, train_clip, world_clip_config
    from cir_tools.world.corpus import captioned_images

    config = world_clip_config()
    image_size = int(config["vision_cfg"]["image_size"])
    pairs = [(c.image, c.captions) for c in captioned_images(recipe.clip_images, recipe.seed, image_size)]
    settings = ClipTrainingSettings(
        steps=recipe.clip_steps, batch_size=recipe.clip_batch_size, seed=recipe.seed
    )
    model = train_clip(config, pairs, settings, progress)
    save_clip(model, folder, config, _clip_name())


def build_mapping(recipe: EncoderRecipe, folder: Path, root: Path, progress: Progress) -> None:
    """LinCIR's Phi (text only), the SEARLE-shaped Phi and Pic2Word's mapping, on the world CLIP."""
    from cir_encoder.clip_loading import load_clip
    from cir_tools.packs.tiny_encoder import save_phi, save_pic2word
    from cir_tools.training.mapping import MappingTrainingSettings, embed_images, train_pic2word, train_searle
    from cir_tools.training.phi import PhiTrainingSettings, train_phi
    from cir_tools.world.corpus import caption_texts, captioned_images

    clip = load_clip(_clip_name(), str(_clip_checkpoint(root)), str(root / CLIP_DIR), "cpu", "fp32")
    phi_settings = PhiTrainingSettings(steps=recipe.lincir_steps, seed=recipe.seed)
    texts = caption_texts(recipe.phi_texts, recipe.seed + 1)
    total = recipe.lincir_steps + recipe.searle_steps + recipe.pic2word_steps
    lincir = train_phi(clip.model, clip.tokenizer, texts, phi_settings, "lincir", _within(progress, 0, total))
    save_phi(lincir, folder / LINCIR_FILE)

    images = captioned_images(recipe.mapping_images, recipe.seed + 2, clip.image_size[0])
    embeddings = embed_images(clip.model, clip.preprocess, [c.image for c in images])
    searle = train_searle(
        clip.model,
        clip.tokenizer,
        embeddings,
        [c.captions[0] for c in images],
        MappingTrainingSettings(steps=recipe.searle_steps, seed=recipe.seed),
        _within(progress, recipe.lincir_steps, total),
    )
    save_phi(searle, folder / SEARLE_FILE)
    pic2word = train_pic2word(
        clip.model,
        clip.tokenizer,
        embeddings,
        MappingTrainingSettings(steps=recipe.pic2word_steps, seed=recipe.seed),
        _within(progress, recipe.lincir_steps + recipe.searle_steps, total),
    )
    save_pic2word(pic2word, folder / PIC2WORD_FILE)


def build_captioner(recipe: Any, folder: Path, root: Path, progress: Progress) -> None:
    from cir_tools.training.blip2 import build_world_captioner

    build_world_captioner(folder, recipe, progress=progress)


def build_llm(recipe: Any, folder: Path, root: Path, progress: Progress) -> None:
    """The LLM, and the world's prompt templates copied beside it (the profile's template_paths)."""
    import shutil

    from cir_tools.training.llm import WORLD_TEMPLATES_DIR, train_world_llm

    train_world_llm(folder / "model", recipe, progress=progress)
    shutil.copytree(WORLD_TEMPLATES_DIR, folder / TEMPLATES_DIR)


def triplet_llm_stage(steps: int = 1500) -> Stage:
    """The world's triplet LLM (InstructCIR's difference prompt), built apart from the pack's stages: only the
    InstructCIR proof serves it (`cir_tools.world.instructcir_proof`), so the pack and CI do not train it."""
    import dataclasses

    from cir_tools.training.llm import triplet_llm_config

    recipe = dataclasses.replace(triplet_llm_config(SEED, LLM_CONTEXT), steps=steps)
    return Stage(
        TRIPLET_LLM_DIR,
        functools.partial(build_triplet_llm, recipe),
        (
            "cir_tools.training.llm",
            "cir_tools.packs.tiny_reasoner",
            "cir_tools.packs.tokenizer",
            "cir_reasoner.prompts",
            "cir_tools.world.triplet_templates",
        ),
        {"llm": recipe},
    )


def build_triplet_llm(recipe: Any, folder: Path, root: Path, progress: Progress) -> None:
    import shutil

    from cir_tools.training.llm import TRIPLET_TEMPLATES_DIR, train_world_llm

    train_world_llm(folder / "model", recipe, progress=progress)
    shutil.copytree(TRIPLET_TEMPLATES_DIR, folder / TEMPLATES_DIR)


def _clip_name() -> str:
    from cir_tools.training.clip import WORLD_CLIP_NAME

    return WORLD_CLIP_NAME


def _clip_checkpoint(root: Path) -> Path:
    from cir_tools.packs.tiny_encoder import CLIP_CHECKPOINT_NAME

    return root / CLIP_DIR / CLIP_CHECKPOINT_NAME


def stages(recipe: WorldRecipe | None = None) -> list[Stage]:
    """The stages in build order, with `recipe` (default: the world pack's)."""
    from cir_tools.training.clip import world_clip_config

    recipe = recipe or WorldRecipe()
    encoder_modules = ("cir_tools.training.clip", "cir_tools.packs.tiny_encoder", "cir_encoder.clip_loading")
    encoder_recipe = {"encoder": recipe.encoder, "clip_config": world_clip_config()}
    return [
        Stage(CLIP_DIR, functools.partial(build_clip, recipe.encoder), encoder_modules, encoder_recipe),
        Stage(
            MAPPING_DIR,
            functools.partial(build_mapping, recipe.encoder),
            (*encoder_modules, "cir_tools.training.phi", "cir_tools.training.mapping", "cir_encoder.phi"),
            encoder_recipe,
            after=(CLIP_DIR,),
        ),
        Stage(
            CAPTIONER_DIR,
            functools.partial(build_captioner, recipe.captioner),
            ("cir_tools.training.blip2", "cir_tools.packs.tiny_captioner", "cir_tools.packs.tokenizer"),
            {"captioner": recipe.captioner},
        ),
        Stage(
            LLM_DIR,
            functools.partial(build_llm, recipe.llm),
            (
                "cir_tools.training.llm",
                "cir_tools.packs.tiny_reasoner",
                "cir_tools.packs.tokenizer",
                "cir_reasoner.prompts",
                "cir_tools.world.templates",
            ),
            {"llm": recipe.llm},
        ),
    ]


def profile_tables(root: Path) -> dict[str, dict[str, str | int | bool | float]]:
    """The profile that points every service at the pack under `root`."""
    mapping = root / MAPPING_DIR
    return {
        ENCODER.profile_section: {
            "clip_model": _clip_name(),
            "clip_pretrained": str(_clip_checkpoint(root)),
            "clip_config_dir": str(root / CLIP_DIR),
            "default_mapping_network": "lincir",
        },
        f"{ENCODER.profile_section}.mapping_networks": {
            "lincir": str(mapping / LINCIR_FILE),
            "searle": str(mapping / SEARLE_FILE),
            "pic2word": str(mapping / PIC2WORD_FILE),
        },
        CAPTIONER.profile_section: {"model": str(root / CAPTIONER_DIR)},
        REASONER.profile_section: {
            "backend": "vllm",
            "model": str(root / LLM_DIR / "model"),
            "max_model_len": LLM_CONTEXT,
            "max_output_tokens": LLM_MAX_OUTPUT_TOKENS,
            # The templates the LLM was trained on answer to the presets' template names.
            "template_paths": str(root / LLM_DIR / TEMPLATES_DIR),
            # CPU machines: vLLM's torch.compile start-up took minutes on 2 cores (see the tiny pack).
            "enforce_eager": True,
        },
        RETRIEVER.profile_section: {
            # As the tiny pack: on a few CPU cores, one generative search at a time finishes fastest.
            "max_concurrent_generative_searches": 1,
            "max_queued_generative_searches": 4,
        },
    }
