"""Train a tiny BLIP-2 (`Blip2ForConditionalGeneration`: ViT + Q-Former + OPT) to caption world images.

The model is the production class with a small config and a byte-level BPE tokenizer trained on the
world's captions, and it is written by `save_blip2`, the writer of the random test pack too, so the
captioner service loads it exactly as a published Salesforce/blip2-* folder.

Training is BLIP-2's captioning objective: the language-modelling loss on "<prompt> <caption></s>", with
the image placeholders, BOS and the prompt masked out of the loss (label -100). The prompt is the one the
captioner prepends at inference ("a photo of"), so the model learns to continue exactly that input; the
trailing EOS teaches it to stop, which both decoding variants need to end a caption. Each step draws a
random paraphrase of each image's scene, so sampled decoding has several valid captions to choose from.
Everything is trained (the model is tiny) with AdamW, linear warmup then cosine decay, a fixed step
count and a seed: the same inputs give the same weights.

Auxiliary scene-attribute objective (a training aid; serving is unchanged). Trained on the captioning loss
alone for the build's few minutes, the model learns the caption grammar and the background (large,
uniform regions) but hardly looks at the objects: on held-out images it names the right shape no better
than chance. The language model's gradient reaches the vision tower only through the Q-Former, weakly
and late. When the training images come with their `Scene`s, a linear head on the Q-Former's output
(all query tokens together) is trained to read the scene off the image at the same time: for each slot
(left, center, right) whether it holds an object and that object's colour, shape and size, plus the
background colour and texture. Its cross-entropy is added to the captioning loss with a weight, and a
short phase of that loss alone may come first (it is cheaper: no language model), so the query tokens
already carry the objects when the language model starts reading them. This is BLIP-2's own recipe in
small: its Q-Former is pre-trained with several objectives besides generation. The head exists only in
training: `train_blip2` returns and `save_blip2` writes a plain `Blip2ForConditionalGeneration`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, PreTrainedTokenizerFast

from cir_tools.packs.common import random_model
from cir_tools.packs.tiny_captioner import (
    Blip2Shapes,
    apply_generation_defaults,
    blip2_config,
    blip2_processor,
    save_blip2,
)
from cir_tools.packs.tokenizer import train_bpe_tokenizer
from cir_tools.training.progress import Progress
from cir_tools.world.scene import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, TEXTURES, Scene

# The captioner's default prompt (CaptionerSettings.default_prompt, method.md 2.3): training continues it.
PROMPT = "a photo of"
IGNORE_INDEX = -100  # label of the positions that carry no loss (transformers' convention)
MAX_THREADS = 2  # the build machines have 2 cores, shared with the other trainers
# Both decoding variants stop a caption after 30 generated tokens (method.md 2.3): a longer training caption
# would teach the model captions that the service cuts off mid-phrase.
CAPTION_TOKENS = 30

# One image with the captions it may be trained on (any of them is a correct caption of the image).
CaptionedPair = tuple[Image.Image, Sequence[str]]

WORLD_IMAGE_SIZE = 64

# Shapes for the world's 64x64 scenes. 16x16 patches (a 4x4 grid, each patch about one object of a slot
# a third of the image wide) beat 8x8 patches per CPU second: a step costs ~0.19 CPU-s with 8x8 patches
# against ~0.12 with 16x16, and at equal CPU time (500 vs 1000 steps, both with the attribute objective)
# 16x16 named held-out colours 88% against 39% and sizes 70% against 40%.
# 16 query tokens carry the several objects of a scene to the language model.
WORLD_BLIP2 = Blip2Shapes(
    vision={
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "image_size": WORLD_IMAGE_SIZE,
        "patch_size": 16,
        # Blip2VisionConfig's default (1e-10) suits a ViT whose weights are always loaded; from scratch
        # it starts the vision tower at zero, and it learns next to nothing about the objects.
        "initializer_range": 0.02,
    },
    qformer={
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 256,
        "max_position_embeddings": 64,
        "encoder_hidden_size": 128,
        # Every layer reads the image (the default is every second one), and no dropout: a short run on
        # a few thousand images is not overfitting yet, and dropout measurably slowed the learning.
        "cross_attention_frequency": 1,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
    },
    text={
        "hidden_size": 128,
        "word_embed_proj_dim": 128,
        "num_hidden_layers": 2,
        "ffn_dim": 256,
        "num_attention_heads": 4,
        "max_position_embeddings": 128,
        "dropout": 0.0,
    },
    num_query_tokens=16,
    # The service passes every decoding parameter itself; this is what a bare `generate` call gets.
    generation={"max_new_tokens": 30},
)


@dataclass(frozen=True)
class AttributeObjective:
    """The auxiliary scene-attribute loss: its weight next to the captioning loss, and how many steps of it
    alone come before the captioning steps (they are counted on top of the recipe's `steps`)."""

    weight: float = 1.0
    warmup_steps: int = 0


@dataclass(frozen=True)
class Blip2Recipe:
    """Everything that fixes a trained world captioner: data sizes, shapes, tokenizer and optimiser."""

    shapes: Blip2Shapes = WORLD_BLIP2
    images: int = 4000  # distinct training images (each with its paraphrases)
    tokenizer_texts: int = 4000  # captions the tokenizer is trained on
    vocab_size: int = 400  # small: every world word is one token
    steps: int = 2000
    batch_size: int = 32
    lr: float = 2e-3
    seed: int = 0
    attributes: AttributeObjective | None = None  # the auxiliary scene-attribute loss (None: captions only)


# With the attribute objective: at equal CPU time (1000-step trials, 200 held-out images, greedy) it took
# object colours from 42% to 88% named right, sizes from 50% to 70%, the objects' slots from 44% to 88%;
# its warm-up (150 attribute-only steps at ~0.05 CPU-s each, in place of 75 captioning steps) to 95%
# colours and 90% slots. A warm-up step costs about 40% of a captioning step: 300 of them take the place
# of ~150 of the 2000 captioning steps the build had before. This full recipe (207 CPU-s on one thread)
# names held-out colours 98.5%, shapes 66%, sizes 93%, and 43% of captions are exact paraphrases
# (captions alone, 2000 steps: 55%, 25%, 47%, 7%).
WORLD_RECIPE = Blip2Recipe(steps=1850, attributes=AttributeObjective(weight=1.0, warmup_steps=300))

# What the auxiliary head reads off a scene: per slot, whether it holds an object and that object's
# colour, shape and size; then the background colour and texture. (name, classes) per attribute.
SLOT_ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("object", ("absent", "present")),
    ("colour", tuple(COLOURS)),
    ("shape", SHAPES),
    ("size", SIZES),
)
SCENE_ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("background", tuple(BACKGROUNDS)),
    ("texture", TEXTURES),
)
ATTRIBUTES: tuple[tuple[str, tuple[str, ...]], ...] = (
    *((f"{position}.{name}", classes) for position in POSITIONS for name, classes in SLOT_ATTRIBUTES),
    *SCENE_ATTRIBUTES,
)


def scene_attribute_targets(scenes: Sequence[Scene]) -> torch.Tensor:
    """Class index of every attribute of every scene (rows follow `ATTRIBUTES`), shape (scenes, attributes);
    an empty slot's colour, shape and size are -100 (no loss: there is nothing to name)."""
    rows = []
    for scene in scenes:
        row: list[int] = []
        for position in POSITIONS:
            item = scene.at(position)
            row.append(int(item is not None))
            if item is None:
                row.extend([IGNORE_INDEX] * (len(SLOT_ATTRIBUTES) - 1))
            else:
                row.extend(
                    [tuple(COLOURS).index(item.colour), SHAPES.index(item.shape), SIZES.index(item.size)]
                )
        row.extend([tuple(BACKGROUNDS).index(scene.background), TEXTURES.index(scene.texture)])
        rows.append(row)
    return torch.tensor(rows, dtype=torch.long)


class AttributeHead(torch.nn.Module):
    """A linear read-out of every scene attribute from the Q-Former's output (all query tokens together, so
    each query can specialise in a slot). Used in training only; never saved with the model."""

    def __init__(self, num_query_tokens: int, hidden_size: int) -> None:
        super().__init__()
        self.sizes = [len(classes) for _, classes in ATTRIBUTES]
        self.linear = torch.nn.Linear(num_query_tokens * hidden_size, sum(self.sizes))

    def forward(self, query_output: torch.Tensor) -> list[torch.Tensor]:
        """Logits per attribute (in `ATTRIBUTES` order), each of shape (batch, classes)."""
        return list(self.linear(query_output.flatten(1)).split(self.sizes, dim=1))

    def loss(self, query_output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean over attributes of the cross-entropy; attributes with no target in the batch are skipped."""
        losses = [
            torch.nn.functional.cross_entropy(logits, targets[:, column], ignore_index=IGNORE_INDEX)
            for column, logits in enumerate(self(query_output))
            if bool(targets[:, column].ne(IGNORE_INDEX).any())
        ]
        return torch.stack(losses).mean()


def query_output(model: Blip2ForConditionalGeneration, pixels: torch.Tensor) -> torch.Tensor:
    """The Q-Former's output for `pixels` (batch, query tokens, hidden): what the language model reads."""
    features = model.get_image_features(pixel_values=pixels, return_dict=True)
    return features.qformer_outputs.last_hidden_state


def caption_tokenizer(texts: Iterable[str], vocab_size: int, prompt: str = PROMPT) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on "<prompt> <text>" for each of `texts` (what the model reads in training),
    with BLIP-2's specials (`<image>` included)."""
    return train_bpe_tokenizer((f"{prompt} {text}" for text in texts), vocab_size, model_max_length=512)


def encode_caption(tokenizer: PreTrainedTokenizerFast, caption: str, prompt: str = PROMPT) -> list[int]:
    """Token ids of "<s> prompt caption</s>": what the language model reads after the image placeholders.

    Checked to start with the prompt's own ids: at inference the processor encodes the prompt alone and
    the model continues it, so training must see the prompt tokenised the same way.
    """
    prompt_ids = tokenizer(prompt)["input_ids"]
    ids = tokenizer(f"{prompt} {caption}")["input_ids"]
    if ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"the prompt {prompt!r} tokenises differently before the caption {caption!r}")
    return [*ids, tokenizer.eos_token_id]


@dataclass(frozen=True)
class CaptionBatch:
    """Model inputs of one batch; `labels` = the caption ids and EOS, -100 everywhere else."""

    pixel_values: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def caption_batch(
    pixel_values: torch.Tensor,
    token_ids: Sequence[Sequence[int]],
    prompt_length: int,
    num_query_tokens: int,
    image_token_id: int,
    pad_token_id: int,
) -> CaptionBatch:
    """Lay out image placeholders + `token_ids` (right-padded) as the processor does at inference, with the
    loss on the caption part only (after the first `prompt_length` ids of each sequence: BOS and prompt)."""
    width = num_query_tokens + max(len(ids) for ids in token_ids)
    input_ids = torch.full((len(token_ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for row, ids in enumerate(token_ids):
        end = num_query_tokens + len(ids)
        input_ids[row, :num_query_tokens] = image_token_id
        input_ids[row, num_query_tokens:end] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :end] = 1
        labels[row, num_query_tokens + prompt_length : end] = input_ids[
            row, num_query_tokens + prompt_length : end
        ]
    return CaptionBatch(pixel_values, input_ids, attention_mask, labels)


def caption_loss(model: Blip2ForConditionalGeneration, batch: CaptionBatch) -> torch.Tensor:
    """Mean token cross-entropy of the batch's captions given its images and the prompt."""
    return _caption_output(model, batch).loss


def _caption_output(model: Blip2ForConditionalGeneration, batch: CaptionBatch) -> Any:
    return model(
        pixel_values=batch.pixel_values,
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        labels=batch.labels,
    )


def pixel_values(processor: Blip2Processor, images: Sequence[Image.Image]) -> torch.Tensor:
    """The images as the captioner's processor prepares them (resize, CLIP normalisation)."""
    return processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]


def train_blip2(
    pairs: Sequence[CaptionedPair],
    shapes: Blip2Shapes,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: Progress | None = None,
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    vocab_size: int = WORLD_RECIPE.vocab_size,
    prompt: str = PROMPT,
    max_caption_tokens: int = CAPTION_TOKENS,
    scenes: Sequence[Scene] | None = None,
    attributes: AttributeObjective | None = None,
) -> tuple[Blip2ForConditionalGeneration, Blip2Processor]:
    """Train a BLIP-2 of `shapes` from scratch to caption `pairs`; return it (eval mode) and its processor.

    `scenes` (one per pair) and `attributes`: train with the auxiliary scene-attribute loss too (module
    docstring); its `warmup_steps` come before the `steps` captioning steps, and `progress` counts both.

    `tokenizer`: the caption tokenizer; by default one is trained on the pairs' captions (`vocab_size`).
    Captions longer than `max_caption_tokens` (EOS not counted) are left out, unless all of an image's are
    (then its shortest is kept). Deterministic for a given seed and inputs (torch runs on at most 2 threads).
    """
    if not pairs:
        raise ValueError("train_blip2 needs at least one (image, captions) pair")
    if any(not captions for _, captions in pairs):
        raise ValueError("every image needs at least one caption")
    if (scenes is None) != (attributes is None):
        raise ValueError("the attribute objective needs both `scenes` and `attributes`")
    if scenes is not None and len(scenes) != len(pairs):
        raise ValueError(f"{len(scenes)} scenes for {len(pairs)} images")
    if tokenizer is None:
        tokenizer = caption_tokenizer((c for _, captions in pairs for c in captions), vocab_size, prompt)
    processor = blip2_processor(shapes, tokenizer)
    prompt_length = len(tokenizer(prompt)["input_ids"])
    encoded = [
        _fitting(
            [encode_caption(tokenizer, c, prompt) for c in captions], prompt_length + max_caption_tokens + 1
        )
        for _, captions in pairs
    ]
    config = blip2_config(shapes, tokenizer)

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(min(MAX_THREADS, previous_threads))
    try:
        pixels = pixel_values(processor, [image for image, _ in pairs])
        model = random_model(Blip2ForConditionalGeneration, config, seed)
        _draw_query_tokens(model, seed)
        apply_generation_defaults(model, shapes)
        head = None
        targets = None
        if scenes is not None:
            torch.manual_seed(seed)  # the head's initial weights
            head = AttributeHead(config.num_query_tokens, config.qformer_config.hidden_size)
            targets = scene_attribute_targets(scenes)
        data = _TrainingData(pixels, encoded, prompt_length, targets)
        _optimise(model, head, attributes, data, config, steps, batch_size, lr, seed, progress)
    finally:
        torch.set_num_threads(previous_threads)
    model.eval()
    return model, processor


def _draw_query_tokens(model: Blip2ForConditionalGeneration, seed: int) -> None:
    """Give the Q-Former's query tokens distinct random starts, as BLIP-2's own pre-training did.

    transformers initialises them to zeros (a published checkpoint always overwrites them). The queries
    carry no position, so identical queries get identical gradients and stay one query repeated: the
    language model would see a single summary of the image instead of one per query.
    """
    generator = torch.Generator().manual_seed(seed)
    std = model.config.qformer_config.initializer_range
    with torch.no_grad():
        model.query_tokens.copy_(torch.randn(model.query_tokens.shape, generator=generator) * std)


def _fitting(encoded: list[list[int]], max_length: int) -> list[list[int]]:
    fitting = [ids for ids in encoded if len(ids) <= max_length]
    return fitting or [min(encoded, key=len)]


@dataclass(frozen=True)
class _TrainingData:
    pixels: torch.Tensor  # every training image, processed
    encoded: Sequence[Sequence[Sequence[int]]]  # per image, its captions' ids
    prompt_length: int
    targets: torch.Tensor | None  # per image, its scene attributes (None: no attribute objective)


def _optimise(
    model: Blip2ForConditionalGeneration,
    head: AttributeHead | None,
    objective: AttributeObjective | None,
    data: _TrainingData,
    config: Blip2Config,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: Progress | None,
) -> None:
    """`warmup` steps of the attribute loss alone (when there is one), then `steps` of the captioning loss
    (plus the weighted attribute loss); one optimiser and one learning-rate schedule over both phases."""
    torch.manual_seed(seed)  # dropout
    order = torch.Generator().manual_seed(seed)
    choose = random.Random(seed)
    warmup = objective.warmup_steps if head is not None and objective is not None else 0
    weight = objective.weight if objective is not None else 0.0
    total = warmup + steps
    parameters = [*model.parameters(), *(head.parameters() if head is not None else ())]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total))

    model.train()
    queue: list[int] = []
    for step in range(1, total + 1):
        # Epochs of shuffled images; a batch never repeats an image while others are unseen.
        while len(queue) < batch_size:
            queue.extend(torch.randperm(len(data.encoded), generator=order).tolist())
        indices, queue = queue[:batch_size], queue[batch_size:]
        if step <= warmup:
            assert head is not None and data.targets is not None
            loss = head.loss(query_output(model, data.pixels[indices]), data.targets[indices])
        else:
            batch = caption_batch(
                data.pixels[indices],
                [choose.choice(data.encoded[i]) for i in indices],
                data.prompt_length,
                config.num_query_tokens,
                config.image_token_id,
                config.text_config.pad_token_id,
            )
            output = _caption_output(model, batch)
            loss = output.loss
            if head is not None and data.targets is not None:
                queries = output.qformer_outputs.last_hidden_state
                loss = loss + weight * head.loss(queries, data.targets[indices])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        scheduler.step()
        if progress is not None:
            progress(step, total, float(loss.detach()))


def _warmup_cosine(steps: int, warmup_fraction: float = 0.05) -> Callable[[int], float]:
    """Learning-rate factor: linear warmup over the first steps, then cosine decay to zero."""
    warmup = max(1, int(steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        done = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))

    return factor


@torch.inference_mode()
def greedy_captions(
    model: Blip2ForConditionalGeneration,
    processor: Blip2Processor,
    images: Sequence[Image.Image],
    prompt: str = PROMPT,
    max_new_tokens: int = 30,
) -> list[str]:
    """One greedy caption per image, the prompt not included (for measuring a trained model)."""
    inputs = processor(images=list(images), text=[prompt] * len(images), return_tensors="pt")
    output = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens)
    generated = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.tokenizer.batch_decode(generated, skip_special_tokens=True)]


def write_trained_blip2(
    out_dir: Path, model: Blip2ForConditionalGeneration, processor: Blip2Processor
) -> Path:
    """Save a trained captioner where the captioner service's `model` setting can point; return the folder."""
    return save_blip2(out_dir, model, processor)


def build_world_captioner(
    out_dir: Path, recipe: Blip2Recipe = WORLD_RECIPE, progress: Progress | None = None
) -> Path:
    """Train the world's captioner on the world's training partition and write it to `out_dir`."""
    from cir_tools.world.corpus import caption_texts, captioned_images

    image_size = recipe.shapes.vision["image_size"]
    examples = captioned_images(recipe.images, seed=recipe.seed, image_size=image_size)
    tokenizer = caption_tokenizer(caption_texts(recipe.tokenizer_texts, seed=recipe.seed), recipe.vocab_size)
    model, processor = train_blip2(
        [(example.image, example.captions) for example in examples],
        recipe.shapes,
        recipe.steps,
        recipe.batch_size,
        recipe.lr,
        recipe.seed,
        progress,
        tokenizer=tokenizer,
        scenes=[example.scene for example in examples] if recipe.attributes is not None else None,
        attributes=recipe.attributes,
    )
    return write_trained_blip2(out_dir, model, processor)
