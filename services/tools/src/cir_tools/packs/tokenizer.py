"""Byte-level BPE tokenizers trained on the spot, for the tiny random models of the test pack.

No tokenizer can be downloaded here, so the BLIP-2 and causal-LM test models get one trained from a
synthetic corpus. `tokenizers` and `transformers` are imported inside the functions: cir_common is also
installed where neither is (the retriever does not need them).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK, IMAGE = "<pad>", "<s>", "</s>", "<unk>", "<image>"
# Order fixes the ids (0..4); the tiny model configs rely on pad=0, bos=1, eos=2.
BASE_SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK, IMAGE)


def train_bpe_tokenizer(
    corpus: Iterable[str],
    vocab_size: int,
    out_dir: str | Path | None = None,
    *,
    extra_specials: Sequence[str] = (),
    model_max_length: int = 2048,
    padding_side: str = "right",
    chat_template: str | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `corpus` and wrap it for transformers.

    Specials are `<pad> <s> </s> <unk> <image>` (ids 0-4), then `extra_specials`. `<s>` is prepended to
    every encoded text, like Llama and OPT do. `<image>` is an ordinary special token of the vocabulary:
    Blip2Processor finds it there; declaring it through `extra_special_tokens={"image_token": ...}` would
    make the processor expand image tokens twice. Saved with `save_pretrained` when `out_dir` is given.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = list(BASE_SPECIAL_TOKENS) + [s for s in extra_specials if s not in BASE_SPECIAL_TOKENS]
    if vocab_size <= len(specials) + 256:
        raise ValueError(
            f"vocab_size {vocab_size} leaves no room for merges beyond the 256 bytes and specials"
        )

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    # Byte-level: any text encodes (no <unk> in practice); prefix space makes "red" and " red" one token.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, bos_id)],
    )

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=model_max_length,
        padding_side=padding_side,
        clean_up_tokenization_spaces=False,
    )
    if chat_template is not None:
        wrapped.chat_template = chat_template
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        wrapped.save_pretrained(str(out_dir))
    return wrapped


# Filler words of padded vocabularies: consonant-vowel syllables, so that every id decodes to a word.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh")
_VOWELS = ("a", "e", "i", "o", "u")
_SYLLABLES = tuple(onset + vowel for onset in _ONSETS for vowel in _VOWELS)
_SPACE = "\u0120"  # the byte-level alphabet's space: a token "Ġword" decodes to " word"


def pad_vocabulary(tokenizer: PreTrainedTokenizerFast, size: int) -> PreTrainedTokenizerFast:
    """Add filler words to `tokenizer` (in place) until it has `size` tokens; return it.

    A model with a real vocabulary size (OPT's 50272, Qwen's 152064) and random weights emits every id
    alike: with a trained vocabulary of a few thousand, nearly every id would decode to nothing and most
    answers would be empty. Each filler is an added token " <syllables>", so every id decodes to a word
    (text that other tokenizers split into a few pieces each, as they would a rare word).
    """
    from tokenizers import AddedToken

    missing = size - len(tokenizer)
    if missing < 0:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than the {size} asked for")
    vocabulary = tokenizer.get_vocab()
    fillers: list[AddedToken] = []
    index = len(_SYLLABLES)  # two syllables at least: fewer words collide with real ones
    while len(fillers) < missing:
        word = _SPACE + _filler_word(index)
        index += 1
        if word not in vocabulary:
            fillers.append(AddedToken(word, normalized=False, special=False))
    tokenizer.add_tokens(fillers)
    return tokenizer


def _filler_word(index: int) -> str:
    syllables = []
    while index:
        index, digit = divmod(index, len(_SYLLABLES))
        syllables.append(_SYLLABLES[digit])
    return "".join(reversed(syllables))


# Vocabulary of the synthetic captions: COCO-like scenes, FashionIQ-like clothing.
_SUBJECTS = (
    "man",
    "woman",
    "child",
    "boy",
    "girl",
    "dog",
    "cat",
    "horse",
    "bird",
    "cow",
    "sheep",
    "elephant",
    "giraffe",
    "zebra",
    "bear",
    "person",
    "group of people",
    "couple",
    "player",
    "skier",
    "surfer",
    "train",
    "bus",
    "car",
    "truck",
    "bicycle",
    "motorcycle",
    "airplane",
    "boat",
    "kite",
    "pizza",
    "sandwich",
    "cake",
    "bowl of fruit",
    "laptop",
    "teddy bear",
    "clock",
    "vase",
    "bench",
    "chair",
    "dress",
    "shirt",
    "t-shirt",
    "blouse",
    "skirt",
    "jacket",
    "coat",
    "sweater",
    "top",
    "tank top",
)
_ADJECTIVES = (
    "red",
    "blue",
    "green",
    "yellow",
    "black",
    "white",
    "brown",
    "gray",
    "pink",
    "purple",
    "orange",
    "small",
    "large",
    "old",
    "young",
    "striped",
    "floral",
    "plain",
    "shiny",
    "wooden",
    "long",
    "short",
    "sleeveless",
    "colorful",
    "dark",
    "bright",
    "empty",
    "crowded",
    "wet",
    "fluffy",
    "tall",
    "tiny",
)
_VERBS = (
    "sitting on",
    "standing next to",
    "walking along",
    "lying on",
    "running across",
    "playing with",
    "holding",
    "riding",
    "eating",
    "looking at",
    "parked near",
    "flying over",
    "resting under",
    "jumping over",
    "waiting at",
    "hanging from",
    "leaning against",
    "carrying",
)
_PLACES = (
    "a beach",
    "a street",
    "a kitchen table",
    "a grassy field",
    "a snowy hill",
    "a wooden bench",
    "the ocean",
    "a city sidewalk",
    "a living room",
    "a busy road",
    "a train station",
    "a park",
    "a plate",
    "the sky",
    "a tennis court",
    "a river",
    "a forest",
    "a desk",
    "a bed",
    "a fence",
)
_TAILS = (
    "",
    "",
    " at night",
    " on a sunny day",
    " in the rain",
    " in front of a building",
    " with trees in the background",
    " near the water",
    " under a blue sky",
    " with a crowd watching",
)


def synthetic_captions(count: int, seed: int = 0) -> Iterator[str]:
    """`count` short image captions built from fixed word lists (same seed, same captions)."""
    rng = random.Random(seed)
    for _ in range(count):
        article = rng.choice(("a", "the", "one", "this", "that"))
        subject = f"{rng.choice(_ADJECTIVES)} {rng.choice(_SUBJECTS)}"
        yield f"{article} {subject} {rng.choice(_VERBS)} {rng.choice(_PLACES)}{rng.choice(_TAILS)}"
