"""Train the reasoner's LLM on the world: a tiny Llama that edits captions and names added objects.

Every training prompt is built by the reasoner's own code, as the service builds it at serving time: the
world's template files loaded by `TemplateRegistry` (the folder the world profile names in
`template_paths`), rendered by `cir_reasoner.prompts` (`per_caption`, `joined`, `first_caption`) and
tokenized by `PromptEncoder` in the chat format (the tokenizer's chat template). The answer follows the
prompt as the assistant's turn and ends with EOS, the turn end of the chat template, so that generation
stops there.

Tasks, mixed in every batch:
- edit, `per_caption` mode (the retriever's default for CVSI): one caption (a random paraphrase of the
  reference) -> the target's canonical caption; the template is one of the edit templates the retriever's
  presets ask for.
- edit, `joined` mode: a few captions (`joined_captions`, 1-4 by default; random paraphrases, repeats
  allowed, as the captioner's samples are) joined by ", " -> the target's canonical caption.
- objects added, both caption selections (first caption; all joined) -> the added objects' noun phrases
  joined by ", ", or NOTHING_ADDED when the edit adds none. CVSI writes F_add into the fine-grained text
  "... And the photo should have <F_add>." and falls back to "" when the answer is unusable; an edit that
  adds nothing is a legitimate answer, not a failure, so the model says so in a word that the parser keeps
  (an empty answer would be recorded as a fallback).
- difference (InstructCIR's triplet job, `cir triplets`), for the world's triplet LLM only
  (`triplet_llm_config`): caption A and caption B, the reference's and the target's canonical captions (the
  form the world captioner writes both in, so that the change is where the two differ word for word) -> the
  modification text. An edit has several phrasings, so this answer is one of them: exact match is bounded
  below 1. It is a model of its own, as an offline job's LLM would be: mixed into the serving LLM's
  training, it cost that model's edits about half their exact matches (per_caption 21% -> 11.5%) and was
  itself right 2.5% of the time.

The recipe, and why (measured on 200 fresh examples per task, see the report of issue 17):
- An edit answer is mostly a copy of the reference caption, so the model must learn to copy from its
  prompt (an induction circuit: two attention layers suffice). Trained on answers alone with long joined
  prompts (up to 15 captions, ~600 tokens), a 4-layer, 64-wide model wrote fluent random world captions
  and got ~1% of edits exactly right after 450 expensive steps.
- Short prompts make steps cheap: per_caption prompts and joined prompts of 1-4 captions are ~130-250
  tokens, so a 2-layer model 128 wide (4 heads of 32, the head size vLLM's CPU attention takes) trains
  ~0.16 CPU-seconds a step and affords over a thousand steps in the budget.
- The prompt's tokens carry a small loss weight (`prompt_loss_weight`): they teach the captions' language
  and, where a caption repeats (joined prompts, the worked example's answer), to predict repeated text,
  which is copying. The answer tokens (and EOS) weigh 1.
- Many small steps: 2400 steps of 8 (0.074 CPU-s a step, ~180 CPU-s) beat 1200 of 16 (0.16 CPU-s a
  step) at the same cost: edits 28% / 24% exact (per_caption / joined of 1-4 captions) against 20% / 20%,
  objects added 97% against 95%. Joined prompts of 15 captions, never trained on, still get 20%. A fifth of
  the paraphrases drop sizes and places, so no model gets every per_caption edit right.
- One thread: on this machine's two shared cores a second thread mostly waits (2 threads measured 0.75
  CPU-s a step under load, 1 thread 0.15).
Training runs a fixed number of steps (no wall-clock budget), seeded: the same config writes the same
model.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from cir_reasoner import prompts
from cir_reasoner.generation import PreparedPrompt, PromptEncoder
from cir_reasoner.parsing import parse_answer
from cir_reasoner.settings import PromptFormat
from cir_reasoner.templates import (
    DIFFERENCE_TEMPLATE,
    OBJECTS_ADDED_TEMPLATE,
    PromptTemplate,
    TemplateRegistry,
    TemplateTask,
)
from cir_tools.packs.tiny_reasoner import chat_tokenizer, save_causal_lm, template_texts, tiny_llama_config
from cir_tools.training.progress import Progress

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from cir_reasoner.core import ReasonedAnswer, Reasoner

# The world's prompt templates: the world profile names this folder in the reasoner's template_paths.
WORLD_TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "world" / "templates"
# The triplet LLM's (InstructCIR's difference prompt), served only for `cir triplets` on the world.
TRIPLET_TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "world" / "triplet_templates"
# The edit templates the retriever's presets ask for (cir_retriever.presets), all overridden by the world's.
EDIT_TEMPLATES = ("edit_contextual", "edit_structural", "edit_structural_fashion")
# The objects-added answer of an edit that adds no object (see the module docstring).
NOTHING_ADDED = "nothing"
# The most captions a joined prompt holds: the captioner returns 15 sampled captions (method.md 2.3).
MAX_JOINED_CAPTIONS = 15
# The caller's budget never binds while training: every prompt is built whole, as the world profile's
# context (LlmTrainingConfig.context minus max_tokens) leaves room for 15 joined captions.
_NO_BUDGET = prompts.Budget(1 << 30, "training")
IGNORE_INDEX = -100


class Task(StrEnum):
    """Which request a training sample stands for: the edit modes and the objects caption selections."""

    PER_CAPTION = "per_caption"
    JOINED = "joined"
    OBJECTS_FIRST = "objects_first"
    OBJECTS_JOINED = "objects_joined"
    DIFFERENCE = "difference"

    @property
    def template_task(self) -> TemplateTask:
        if self is Task.DIFFERENCE:
            return TemplateTask.DIFFERENCE
        edit = self in (Task.PER_CAPTION, Task.JOINED)
        return TemplateTask.EDIT if edit else TemplateTask.OBJECTS_ADDED


# Share of each task in the serving LLM's training mix; the edits get more: rewriting a caption is the
# harder task.
DEFAULT_TASK_MIX: dict[Task, float] = {
    Task.PER_CAPTION: 0.35,
    Task.JOINED: 0.35,
    Task.OBJECTS_FIRST: 0.1,
    Task.OBJECTS_JOINED: 0.2,
}


class EditLike(Protocol):
    """What a training example provides: `cir_tools.world.corpus.EditExample` (tests use a stand-in)."""

    @property
    def reference_captions(self) -> tuple[str, ...]: ...
    @property
    def instruction(self) -> str: ...
    @property
    def target_caption(self) -> str: ...
    @property
    def added_objects(self) -> tuple[str, ...]: ...
    @property
    def kind(self) -> str: ...


@dataclass(frozen=True)
class LlmTrainingConfig:
    """Model shape, tokenizer and the fixed training budget (steps, not seconds: results are seeded)."""

    seed: int = 0
    # Many small steps beat fewer large ones at equal cost: a step's cost is mostly fixed overhead at this
    # size (batch 8: 0.074 CPU-s a step, batch 16: 0.16), and copying is learnt in updates, not samples.
    steps: int = 2400
    # Steps of language modelling on world text before the prompts (see world_text_samples); 0 = none:
    # the prompt's own tokens (prompt_loss_weight) teach the same language at no extra cost.
    pretrain_steps: int = 0
    # Captions per world-text sequence: paraphrases of one scene joined by ", ".
    pretrain_captions: tuple[int, int] = (2, 5)
    batch_size: int = 8
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    # The learning rate at the end of the cosine, as a share of the peak.
    final_lr_share: float = 0.05
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # head_dim = hidden_size / heads = 32: vLLM's CPU attention takes 32 or 64 on AVX2.
    # Two layers: copying from the prompt needs an induction circuit, which two layers hold (a third
    # measured no better at equal steps, and costs 40% more a step).
    hidden_size: int = 128
    intermediate_size: int = 384
    layers: int = 2
    heads: int = 4
    # Positions: 15 joined world captions and a template take ~600 tokens; the rest leaves the reasoner's
    # budget (context - max_tokens) room for them with a max_output_tokens of a few hundred.
    context: int = 2048
    vocab_size: int = 1024
    # Tokenizer corpus: this many world captions (with the edit examples' texts and the templates).
    tokenizer_texts: int = 3000
    task_mix: dict[Task, float] = field(default_factory=lambda: dict(DEFAULT_TASK_MIX))
    # How many captions a joined training prompt carries (drawn uniformly, repeats allowed).
    joined_captions: tuple[int, int] = (1, 4)
    # Loss weight of the prompt's tokens (the answer's weigh 1); see the module docstring.
    prompt_loss_weight: float = 0.2
    # The template folder the prompts (and the tokenizer's corpus) come from; "" = WORLD_TEMPLATES_DIR.
    templates_dir: str = ""
    # At most 2 (the machine's cores); 1 by default: on the shared 2-core machine a second thread mostly
    # waited (see the module docstring).
    threads: int = 1
    # Length-grouped batching: samples are sorted by length within pools of this many batches.
    group_batches: int = 8


@dataclass(frozen=True)
class TrainingSample:
    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]  # the answer's tokens and EOS
    task: Task | None  # None: a world-text sequence of the pretraining stage
    template: str
    answer: str
    kind: str
    # The request the prompt stands for (what a client would send the reasoner).
    captions: tuple[str, ...]
    instruction: str


@dataclass(frozen=True)
class TrainedLlm:
    path: Path
    losses: list[float]
    train_seconds: float
    total_seconds: float


def objects_answer(added: Sequence[str]) -> str:
    """The objects-added answer the model is trained to give: the noun phrases joined by ", "."""
    return ", ".join(added) if added else NOTHING_ADDED


def expected_answer(example: EditLike, task: Task) -> str:
    """The exact answer a task's prompt should get for `example`."""
    if task is Task.DIFFERENCE:
        return example.instruction
    if task.template_task is TemplateTask.EDIT:
        return example.target_caption
    return objects_answer(example.added_objects)


def world_templates(template_dir: Path = WORLD_TEMPLATES_DIR) -> TemplateRegistry:
    """The templates the reasoner loads with `template_paths = [template_dir]` (the world's replace the
    built-ins of the same name)."""
    return TemplateRegistry.load([str(template_dir)])


def chat_encoder(tokenizer: PreTrainedTokenizerFast) -> PromptEncoder:
    """The reasoner's prompt encoder in the chat format (what `auto` resolves to with a chat template)."""
    return PromptEncoder(tokenizer, PromptFormat.CHAT)


def build_prompt(
    task: Task, template: PromptTemplate, captions: Sequence[str], instruction: str, encoder: PromptEncoder
) -> PreparedPrompt:
    """The prompt the reasoner sends for `task`, built by its own prompt code (one caption for
    PER_CAPTION and OBJECTS_FIRST; for DIFFERENCE, `captions` is the pair (A, B) and `instruction` unused)."""
    if task is Task.DIFFERENCE:
        caption_a, caption_b = captions
        pair = prompts.CaptionPair(caption_a, caption_b)
        (item,) = prompts.caption_pairs(template, [pair], encoder.prepare, _NO_BUDGET).items
        return item.prompt
    build: prompts.Build = {
        Task.PER_CAPTION: prompts.per_caption,
        Task.JOINED: prompts.joined,
        Task.OBJECTS_FIRST: prompts.first_caption,
        Task.OBJECTS_JOINED: prompts.joined,
    }[task]
    plan = build(template, captions, instruction, encoder.prepare, _NO_BUDGET)
    (item,) = plan.items  # per_caption is called with one caption
    return item.prompt


def choose_captions(
    task: Task,
    example: EditLike,
    rng: random.Random,
    joined_span: tuple[int, int] = (1, MAX_JOINED_CAPTIONS),
) -> list[str]:
    """The captions a request carries: one paraphrase, or a count in `joined_span` drawn with repeats
    (sampled captions of one image repeat themselves); for DIFFERENCE, the reference's and the target's
    canonical captions."""
    references = example.reference_captions
    if task is Task.DIFFERENCE:
        return [references[0], example.target_caption]  # the canonical captions (paraphrases() puts it first)
    if task in (Task.PER_CAPTION, Task.OBJECTS_FIRST):
        return [rng.choice(references)]
    count = rng.randint(*joined_span)
    return [rng.choice(references) for _ in range(count)]


def make_samples(
    examples: Iterable[EditLike],
    tokenizer: PreTrainedTokenizerFast,
    templates: TemplateRegistry,
    rng: random.Random,
    task_mix: dict[Task, float] | None = None,
    joined_span: tuple[int, int] = (1, MAX_JOINED_CAPTIONS),
) -> list[TrainingSample]:
    """One training sample per example: a task drawn from `task_mix`, the reasoner's prompt and the answer."""
    mix = task_mix or DEFAULT_TASK_MIX
    tasks, weights = list(mix), list(mix.values())
    encoder = chat_encoder(tokenizer)
    samples = []
    for example in examples:
        task = rng.choices(tasks, weights)[0]
        if task is Task.DIFFERENCE:
            template = templates.get(DIFFERENCE_TEMPLATE, TemplateTask.DIFFERENCE)
        elif task.template_task is TemplateTask.EDIT:
            template = templates.get(rng.choice(EDIT_TEMPLATES), TemplateTask.EDIT)
        else:
            template = templates.get(OBJECTS_ADDED_TEMPLATE, TemplateTask.OBJECTS_ADDED)
        captions = choose_captions(task, example, rng, joined_span)
        instruction = "" if task is Task.DIFFERENCE else example.instruction
        prompt = build_prompt(task, template, captions, instruction, encoder)
        assert prompt.token_ids is not None
        answer = expected_answer(example, task)
        answer_ids = (*tokenizer(answer, add_special_tokens=False).input_ids, tokenizer.eos_token_id)
        samples.append(
            TrainingSample(
                prompt.token_ids,
                answer_ids,
                task,
                template.name,
                answer,
                example.kind,
                tuple(captions),
                instruction,
            )
        )
    return samples


def world_tokenizer(texts: Iterable[str], config: LlmTrainingConfig) -> PreTrainedTokenizerFast:
    """The world LLM's tokenizer: BPE on world text and the world templates (small vocabulary, so world
    words are one token each and prompts stay short), with the tiny pack's role tokens and chat template."""
    corpus = [*template_texts(templates_dir(config)) * 5, *texts]
    return chat_tokenizer(corpus, config.vocab_size, config.context)


def templates_dir(config: LlmTrainingConfig) -> Path:
    return Path(config.templates_dir) if config.templates_dir else WORLD_TEMPLATES_DIR


def triplet_llm_config(seed: int, context: int) -> LlmTrainingConfig:
    """The world's triplet LLM: the difference task alone, on the triplet templates (see the module
    docstring for why it is not part of the serving LLM)."""
    return LlmTrainingConfig(
        seed=seed,
        context=context,
        task_mix={Task.DIFFERENCE: 1.0},
        templates_dir=str(TRIPLET_TEMPLATES_DIR),
    )


def new_model(tokenizer: PreTrainedTokenizerFast, config: LlmTrainingConfig) -> LlamaForCausalLM:
    from transformers import LlamaForCausalLM

    llama = tiny_llama_config(
        tokenizer,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        layers=config.layers,
        heads=config.heads,
        context=config.context,
    )
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(llama)


def length_grouped_batches(
    samples: Sequence[TrainingSample], batch_size: int, group_batches: int, rng: random.Random
) -> list[list[TrainingSample]]:
    """Batches of similar length (less padding: joined prompts are 2-3x longer), in a random order."""
    order = list(samples)
    rng.shuffle(order)
    pool = batch_size * group_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda s: len(s.prompt_ids) + len(s.answer_ids))
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def collate(
    batch: Sequence[TrainingSample], pad_id: int, prompt_weight: float = 0.0
) -> dict[str, torch.Tensor]:
    """Right-padded ids and attention mask; labels on the answer tokens (weight 1) and, when
    `prompt_weight` > 0, on the prompt's tokens after the first (that weight); IGNORE_INDEX elsewhere."""
    width = max(len(s.prompt_ids) + len(s.answer_ids) for s in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    weights = torch.zeros((len(batch), width))
    for row, sample in enumerate(batch):
        sequence = [*sample.prompt_ids, *sample.answer_ids]
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
        start = 1 if prompt_weight > 0 else len(sample.prompt_ids)
        labels[row, start : len(sequence)] = torch.tensor(sequence[start:])
        weights[row, start : len(sample.prompt_ids)] = prompt_weight
        weights[row, len(sample.prompt_ids) : len(sequence)] = 1.0
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "weights": weights}


def weighted_loss(model: LlamaForCausalLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token cross-entropy, each labelled token weighted by `batch["weights"]` (weighted mean)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets, weights = batch["labels"][:, 1:], batch["weights"][:, 1:]
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    return (per_token * weights.reshape(-1)).sum() / weights.sum()


def learning_rate_at(step: int, config: LlmTrainingConfig) -> float:
    """Linear warmup to the peak, then a cosine down to final_lr_share of it."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    floor = config.final_lr_share
    return config.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(
    model: LlamaForCausalLM,
    batches: Sequence[Sequence[TrainingSample]],
    config: LlmTrainingConfig,
    pad_id: int,
    progress: Progress | None = None,
) -> list[float]:
    """AdamW over `batches` (one step each, config.steps of them at most); the loss of every step.
    `progress(step, total, loss)` is called after each step (step counts from 1)."""
    torch.set_num_threads(min(2, config.threads))
    torch.manual_seed(config.seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.98),
    )
    model.train()
    losses = []
    total = min(config.steps, len(batches))
    for step, batch in enumerate(batches[:total]):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        loss = weighted_loss(model, collate(batch, pad_id, config.prompt_loss_weight))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, total, losses[-1])
    model.eval()
    return losses


def world_text_samples(
    examples: Iterable[EditLike],
    tokenizer: PreTrainedTokenizerFast,
    rng: random.Random,
    span: tuple[int, int],
) -> list[TrainingSample]:
    """Pretraining sequences, one per example: a few paraphrases of its reference scene joined by ", "
    (the text a joined prompt carries), loss on every token after BOS.

    Answer-only loss on the prompts gives a few dozen supervised tokens per sequence, too few for a model
    trained for minutes to learn to copy a caption from its prompt; on these sequences every later caption
    is predictable by copying words of the earlier ones, so a short stage of them teaches copying cheaply,
    as pretraining does for real LLMs before instruction tuning.
    """
    samples = []
    for example in examples:
        captions = [rng.choice(example.reference_captions) for _ in range(rng.randint(*span))]
        text = prompts.CAPTION_SEPARATOR.join(captions)
        ids = (*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id)
        samples.append(
            TrainingSample((tokenizer.bos_token_id,), ids, None, "", text, example.kind, tuple(captions), "")
        )
    return samples


def train_world_llm(
    out_dir: Path,
    config: LlmTrainingConfig | None = None,
    examples: Sequence[EditLike] | None = None,
    texts: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> TrainedLlm:
    """Train the world's LLM and write it (bf16, tokenizer, chat template) to `out_dir`.

    `examples` and `texts` (tokenizer corpus) default to the world's training corpus: (pretrain_steps +
    steps) * batch_size edit examples and config.tokenizer_texts captions drawn from config.seed. The
    pretraining stage (world text) runs first, then the prompts; one learning-rate schedule spans both.
    """
    config = config or LlmTrainingConfig()
    started = time.perf_counter()
    pretrain_count = config.pretrain_steps * config.batch_size
    if examples is None or texts is None:
        from cir_tools.world import corpus

        if examples is None:
            examples = corpus.edit_examples(pretrain_count + config.steps * config.batch_size, config.seed)
        if texts is None:
            texts = corpus.caption_texts(config.tokenizer_texts, config.seed + 1)
    rng = random.Random(config.seed)
    tokenizer = world_tokenizer([*texts, *example_texts(examples)], config)
    pretraining = world_text_samples(examples[:pretrain_count], tokenizer, rng, config.pretrain_captions)
    samples = make_samples(
        examples[pretrain_count:],
        tokenizer,
        world_templates(templates_dir(config)),
        rng,
        config.task_mix,
        config.joined_captions,
    )
    batches = [
        *length_grouped_batches(pretraining, config.batch_size, config.group_batches, rng),
        *length_grouped_batches(samples, config.batch_size, config.group_batches, rng),
    ]
    model = new_model(tokenizer, config)
    train_started = time.perf_counter()
    schedule = dataclasses.replace(config, steps=config.pretrain_steps + config.steps)
    losses = train(model, batches, schedule, tokenizer.pad_token_id, progress)
    train_seconds = time.perf_counter() - train_started
    save_causal_lm(out_dir, model, tokenizer)
    return TrainedLlm(out_dir, losses, train_seconds, time.perf_counter() - started)


def example_texts(examples: Iterable[EditLike]) -> list[str]:
    """The words the examples bring into prompts and answers (captions, instructions, added objects)."""
    texts = []
    for example in examples:
        texts.extend(example.reference_captions)
        texts.extend((example.instruction, example.target_caption, objects_answer(example.added_objects)))
    return texts


# --- evaluation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """Exact-match accuracy of parsed greedy answers, overall and per task and per edit kind."""

    accuracy: float
    by_task: dict[str, float]
    by_kind: dict[str, float]
    count: int


def greedy_answers(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    batch_size: int = 32,
) -> list[str]:
    """Greedy completions of token-id prompts (left padding, stop at EOS), decoded without specials."""
    model.eval()
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    answers = [""] * len(prompt_ids)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(prompt_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, index in enumerate(rows):
            prompt = prompt_ids[index]
            ids[row, width - len(prompt) :] = torch.tensor(list(prompt))
            mask[row, width - len(prompt) :] = 1
        with torch.no_grad():
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        for row, index in enumerate(rows):
            answers[index] = tokenizer.decode(output[row, width:], skip_special_tokens=True)
    return answers


def score(
    raw_answers: Sequence[str | None], samples: Sequence[TrainingSample], templates: TemplateRegistry
) -> Scored:
    """Exact match of each raw answer, parsed by the production parser, with the sample's answer."""
    hits: list[tuple[TrainingSample, bool]] = []
    for raw, sample in zip(raw_answers, samples, strict=True):
        template = templates.get(sample.template, sample.task.template_task)
        # A difference answer is kept in plain words, as DescribeDifferences parses it.
        plain = sample.task is Task.DIFFERENCE
        parsed = parse_answer(raw, "", labels=[template.answer_label], plain=plain)
        hits.append((sample, parsed.text == sample.answer))

    def share(selected: list[bool]) -> float:
        return sum(selected) / len(selected) if selected else 0.0

    return Scored(
        accuracy=share([hit for _, hit in hits]),
        by_task={t: share([h for s, h in hits if s.task == t]) for t in sorted({s.task for s, _ in hits})},
        by_kind={k: share([h for s, h in hits if s.kind == k]) for k in sorted({s.kind for s, _ in hits})},
        count=len(hits),
    )


def evaluation_samples(
    examples: Iterable[EditLike],
    tokenizer: PreTrainedTokenizerFast,
    templates: TemplateRegistry,
    seed: int,
    joined_span: tuple[int, int] = (1, MAX_JOINED_CAPTIONS),
    tasks: Sequence[Task] = tuple(DEFAULT_TASK_MIX),
) -> list[TrainingSample]:
    """Every example under each of `tasks` (prompts built as in training)."""
    examples = list(examples)
    rng = random.Random(seed)
    samples = []
    for task in tasks:
        samples.extend(make_samples(examples, tokenizer, templates, rng, {task: 1.0}, joined_span))
    return samples


def evaluate_transformers(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    examples: Iterable[EditLike],
    seed: int = 1,
    templates: TemplateRegistry | None = None,
    joined_span: tuple[int, int] = (1, MAX_JOINED_CAPTIONS),
    tasks: Sequence[Task] = tuple(DEFAULT_TASK_MIX),
) -> Scored:
    """Exact-match accuracy of greedy transformers answers on `examples` under each of `tasks`."""
    templates = templates or world_templates()
    samples = evaluation_samples(examples, tokenizer, templates, seed, joined_span, tasks)
    raw = greedy_answers(model, tokenizer, [s.prompt_ids for s in samples])
    return score(raw, samples, templates)


async def reasoner_answers(reasoner: Reasoner, samples: Sequence[TrainingSample]) -> list[ReasonedAnswer]:
    """Each sample's request sent to a loaded reasoner core (greedy, defaults otherwise, no cache), one at a
    time: the answers the service would give, parsed by its parser."""
    from cir_common.vocabulary import CaptionSelection, EditMode
    from cir_reasoner.core import DifferenceQuery, Query, SamplingRequest

    answers = []
    for sample in samples:
        if sample.task is Task.DIFFERENCE:
            difference = DifferenceQuery(
                pairs=reasoner.check_pairs([(sample.captions[0], sample.captions[1])]),
                template=sample.template,
                sampling=SamplingRequest(),
                bypass_cache=True,
                time_remaining_s=None,
            )
            (answer,) = (await reasoner.describe_differences(difference)).answers
            answers.append(answer)
            continue
        query = Query(
            inputs=reasoner.check_inputs(sample.captions, sample.instruction),
            template=sample.template,
            sampling=SamplingRequest(),
            bypass_cache=True,
            time_remaining_s=None,
        )
        if sample.task is Task.PER_CAPTION:
            reasoning = (await reasoner.edit_captions(query, EditMode.PER_CAPTION)).reasoning
        elif sample.task is Task.JOINED:
            reasoning = (await reasoner.edit_captions(query, EditMode.JOINED)).reasoning
        else:
            selection = (
                CaptionSelection.FIRST if sample.task is Task.OBJECTS_FIRST else CaptionSelection.ALL_JOINED
            )
            reasoning = (await reasoner.infer_added_objects(query, selection)).reasoning
        (answer,) = reasoning.answers
        answers.append(answer)
    return answers
