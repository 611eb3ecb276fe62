"""The decoding variants of method.md 2.3 as data, per-request overrides, and the `generate` arguments.

`resolve_decoding` turns a request's overrides into one validated, hashable `DecodingParams`: the batcher
groups requests by it and the cache keys on it, so two requests share a generate call or a cache entry
exactly when every parameter that shapes the captions is equal. `generate_kwargs` is the only place that
builds what `generate` receives.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cir_common.errors import InvalidArgument, ResourceExhausted
from cir_common.vocabulary import CAPTIONER, DecodingVariant

# The settings behind the limits are named by their environment variables (cir_captioner.settings).
ENV_PREFIX = CAPTIONER.env_prefix


@dataclass(frozen=True)
class VariantDefaults:
    do_sample: bool
    top_p: float
    temperature: float
    num_beams: int
    # Caption length in generated tokens. The papers' code names it differently per variant; the proto keeps
    # both names (`max_new_tokens` for nucleus, `max_length` for beam_sample) and so does `length_field`.
    length_field: str
    caption_tokens: int
    min_length: int | None


VARIANT_DEFAULTS: dict[DecodingVariant, VariantDefaults] = {
    DecodingVariant.NUCLEUS: VariantDefaults(  # LDRE's stack
        do_sample=True, top_p=0.9, temperature=1.0, num_beams=1,
        length_field="max_new_tokens", caption_tokens=30, min_length=None,
    ),
    DecodingVariant.BEAM_SAMPLE: VariantDefaults(  # CVSI's released stack
        do_sample=True, top_p=0.9, temperature=1.0, num_beams=15,
        length_field="max_length", caption_tokens=30, min_length=1,
    ),
}  # fmt: skip

# Not per-request. These are the values transformers applied implicitly when LAVIS (LDRE) and CVSI ran;
# passing them explicitly keeps a checkpoint's generation_config.json from silently changing the sampler.
# The stop token is left to the checkpoint: HF's BLIP-2 OPT conversion set the text config's eos to "\n",
# the token LAVIS passed as eos_token_id (the trailing newline is stripped with the other whitespace).
FIXED_GENERATE_ARGS: dict[str, Any] = {"top_k": 50, "repetition_penalty": 1.0, "length_penalty": 1.0}

MAX_TEMPERATURE = 10.0  # far past any useful value; bounds a request to something a sampler can run


@dataclass(frozen=True)
class DecodingOverrides:
    """What a request asked for; None = take the variant's (or the server's) default."""

    variant: DecodingVariant | None = None
    top_p: float | None = None
    temperature: float | None = None
    num_beams: int | None = None
    max_new_tokens: int | None = None
    max_length: int | None = None
    min_length: int | None = None
    prompt: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class DecodingLimits:
    max_num_captions: int
    max_new_tokens: int
    max_num_beams: int
    max_prompt_chars: int


@dataclass(frozen=True)
class ServerDecodingDefaults:
    variant: DecodingVariant
    num_captions: int
    prompt: str
    # Benchmarks only (CIR_CAPTIONER_BENCHMARK_CAPTION_TOKENS): every caption exactly this long. 0 = off.
    fixed_caption_tokens: int = 0


@dataclass(frozen=True)
class DecodingParams:
    """Every parameter that shapes the captions, defaults filled in. Hashable: the batching key."""

    variant: DecodingVariant
    num_captions: int
    do_sample: bool
    top_p: float
    temperature: float
    num_beams: int
    # Exactly one of the two is set, the one the variant uses; both count generated tokens only.
    max_new_tokens: int | None
    max_length: int | None
    min_length: int | None
    prompt: str
    seed: int | None

    @property
    def caption_tokens(self) -> int:
        value = self.max_new_tokens if self.max_new_tokens is not None else self.max_length
        assert value is not None
        return value

    @property
    def length_field(self) -> str:
        return VARIANT_DEFAULTS[self.variant].length_field

    def cache_params(self) -> dict[str, Any]:
        """Every field plus the fixed sampler arguments: what a cache key must carry."""
        return {**dataclasses.asdict(self), **FIXED_GENERATE_ARGS}


def generate_kwargs(params: DecodingParams) -> dict[str, Any]:
    """The keyword arguments `Blip2ForConditionalGeneration.generate` receives (besides the model inputs)."""
    return {
        "do_sample": params.do_sample,
        "top_p": params.top_p,
        "temperature": params.temperature,
        "num_beams": params.num_beams,
        "num_return_sequences": params.num_captions,
        # Both papers' lengths count caption tokens: LAVIS's blip2_opt passed its `max_length` to OPT as
        # `max_new_tokens`, and its later inputs_embeds-only call started counting at the first generated
        # token. transformers 5.x BLIP-2 `generate` instead hands the language model its input_ids (one
        # placeholder per query token, BOS, the prompt), so `max_length=30` there would count the 32 query
        # tokens of the real checkpoint and leave no room for a caption. Hence the *_new_tokens forms.
        "max_new_tokens": params.caption_tokens,
        **({} if params.min_length is None else {"min_new_tokens": params.min_length}),
        **FIXED_GENERATE_ARGS,
    }


def resolve_decoding(
    overrides: DecodingOverrides,
    num_captions: int,
    defaults: ServerDecodingDefaults,
    limits: DecodingLimits,
) -> DecodingParams:
    """Fills in defaults and checks every value; InvalidArgument or ResourceExhausted name the field."""
    variant = overrides.variant or defaults.variant
    base = VARIANT_DEFAULTS[variant]
    n = num_captions or defaults.num_captions
    if n > limits.max_num_captions:
        raise ResourceExhausted(
            f"num_captions {n} is over the limit of {limits.max_num_captions} ({ENV_PREFIX}MAX_NUM_CAPTIONS)"
        )

    top_p = base.top_p if overrides.top_p is None else overrides.top_p
    if not 0.0 < top_p <= 1.0:  # also refuses NaN
        raise InvalidArgument(f"decoding.top_p must be in (0, 1], got {top_p}")
    temperature = base.temperature if overrides.temperature is None else overrides.temperature
    if not 0.0 < temperature <= MAX_TEMPERATURE:
        raise InvalidArgument(f"decoding.temperature must be in (0, {MAX_TEMPERATURE:g}], got {temperature}")

    num_beams = base.num_beams if overrides.num_beams is None else overrides.num_beams
    if num_beams < 1:
        raise InvalidArgument(f"decoding.num_beams must be at least 1, got {num_beams}")
    if num_beams > limits.max_num_beams:
        raise ResourceExhausted(
            f"decoding.num_beams {num_beams} is over the limit of {limits.max_num_beams} "
            f"({ENV_PREFIX}MAX_NUM_BEAMS)"
        )
    if num_beams > 1 and n > num_beams:
        raise InvalidArgument(
            f"num_captions {n} is more than decoding.num_beams {num_beams}: beam search returns its best "
            f"num_captions beams, so it needs num_beams >= num_captions; set decoding.num_beams to at "
            f"least {n} or ask for at most {num_beams} captions"
        )

    caption_tokens = _caption_tokens(variant, base, overrides, limits)
    min_length = base.min_length if overrides.min_length is None else overrides.min_length
    if defaults.fixed_caption_tokens:
        # Random-weight models never end a caption: a benchmark fixes their length to a real caption's.
        caption_tokens = min_length = defaults.fixed_caption_tokens
    if min_length is not None and min_length > caption_tokens:
        raise InvalidArgument(
            f"decoding.min_length {min_length} is over decoding.{base.length_field} {caption_tokens}; "
            "a caption cannot be longer than its maximum"
        )

    prompt = defaults.prompt if overrides.prompt is None else overrides.prompt
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidArgument(
            f"decoding.prompt has {len(prompt)} characters, over the limit of {limits.max_prompt_chars} "
            f"({ENV_PREFIX}MAX_PROMPT_CHARS)"
        )

    return DecodingParams(
        variant=variant,
        num_captions=n,
        do_sample=base.do_sample,
        top_p=top_p,
        temperature=temperature,
        num_beams=num_beams,
        max_new_tokens=caption_tokens if base.length_field == "max_new_tokens" else None,
        max_length=caption_tokens if base.length_field == "max_length" else None,
        min_length=min_length,
        prompt=prompt,
        seed=overrides.seed,
    )


def _caption_tokens(
    variant: DecodingVariant, base: VariantDefaults, overrides: DecodingOverrides, limits: DecodingLimits
) -> int:
    given = {"max_new_tokens": overrides.max_new_tokens, "max_length": overrides.max_length}
    other = "max_length" if base.length_field == "max_new_tokens" else "max_new_tokens"
    if given[other] is not None:
        # Refused rather than aliased: a caller who sets the other variant's field has likely mixed up
        # variants, and silently ignoring it would hide that.
        raise InvalidArgument(
            f"decoding.{other} does not apply to the {variant.value} variant, whose caption length is "
            f"decoding.{base.length_field} (counted in generated tokens); set that instead"
        )
    value = given[base.length_field]
    tokens = base.caption_tokens if value is None else value
    if tokens < 1:
        raise InvalidArgument(f"decoding.{base.length_field} must be at least 1, got {tokens}")
    if tokens > limits.max_new_tokens:
        raise ResourceExhausted(
            f"decoding.{base.length_field} {tokens} is over the limit of {limits.max_new_tokens} generated "
            f"tokens ({ENV_PREFIX}MAX_NEW_TOKENS)"
        )
    return tokens
