"""The captioner's model work, synchronous and batch-shaped: images in, N captions per image out.

Everything here runs on the batcher's single worker thread, which is also why the tokenizer and the global
torch RNG can be used without locks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from PIL import Image

from cir_captioner.blip2_loading import LoadedBlip2
from cir_captioner.decoding import DecodingParams, generate_kwargs
from cir_common.errors import InvalidArgument


class CaptionEngine:
    def __init__(self, blip2: LoadedBlip2) -> None:
        self.blip2 = blip2
        self._model = blip2.model
        self._processor = blip2.processor
        self._tokenizer = blip2.processor.tokenizer
        text_config = blip2.model.config.text_config
        # Encoder-decoder language models (Flan-T5) use relative positions: no hard context to check.
        self.max_positions: int | None = (
            None if text_config.is_encoder_decoder else getattr(text_config, "max_position_embeddings", None)
        )
        self._prompt_tokens: dict[str, int] = {}
        self._rng_devices = [torch.device(blip2.device).index or 0] if blip2.device.startswith("cuda") else []

    @property
    def identity(self) -> str:
        return self.blip2.identity

    @property
    def name(self) -> str:
        return self.blip2.identity.rpartition("@")[0]

    @property
    def revision(self) -> str:
        return self.blip2.weights_sha256 or self.blip2.identity.rpartition("@")[2]

    @property
    def dtype_name(self) -> str:
        return str(self.blip2.dtype).removeprefix("torch.")

    def caption(self, params: DecodingParams, images: Sequence[Image.Image]) -> list[list[str]]:
        """`params.num_captions` captions for each image, in input order.

        Without a seed the images share one generate call. With a seed each image gets its own call on a
        freshly seeded RNG: sampling draws from one stream for the whole batch, so a batched image's captions
        would depend on which other images (from other requests) happened to share the call. Per image, a
        seed gives the same captions for the same image and parameters whatever it was batched with, which is
        also what makes caching seeded captions per image correct.
        """
        self.check_fits_context(params)
        kwargs = generate_kwargs(params)
        if params.seed is None:
            return self._generate(images, params, kwargs)
        captions: list[list[str]] = []
        for image in images:
            with self._seeded(params.seed):
                captions.extend(self._generate([image], params, kwargs))
        return captions

    def check_fits_context(self, params: DecodingParams) -> None:
        if self.max_positions is None:
            return
        prompt_tokens = self.prompt_token_count(params.prompt)
        needed = self.blip2.num_query_tokens + prompt_tokens + params.caption_tokens
        if needed > self.max_positions:
            raise InvalidArgument(
                f"{self.blip2.num_query_tokens} image query tokens + {prompt_tokens} prompt tokens + "
                f"decoding.{params.length_field} {params.caption_tokens} = {needed} positions, more than the "
                f"language model's {self.max_positions}; shorten decoding.prompt or the caption length"
            )

    def prompt_token_count(self, prompt: str) -> int:
        """Tokens the prompt takes in the language model's input, special tokens (BOS) included."""
        count = self._prompt_tokens.get(prompt)
        if count is None:
            count = len(self._tokenizer(prompt)["input_ids"])
            if len(self._prompt_tokens) < 1024:  # prompts come from requests: keep the memo bounded
                self._prompt_tokens[prompt] = count
        return count

    @torch.inference_mode()
    def _generate(
        self, images: Sequence[Image.Image], params: DecodingParams, kwargs: dict[str, object]
    ) -> list[list[str]]:
        inputs = self._processor(images=list(images), text=[params.prompt] * len(images), return_tensors="pt")
        inputs = inputs.to(self.blip2.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.blip2.dtype)
        output = self._model.generate(**inputs, **kwargs)
        n = params.num_captions
        if output.shape[0] != len(images) * n:
            raise RuntimeError(
                f"generate returned {output.shape[0]} sequences for {len(images)} images x {n}"
            )
        generated = _generated_part(output, inputs["input_ids"].repeat_interleave(n, dim=0))
        texts = self._tokenizer.batch_decode(generated, skip_special_tokens=True)
        captions = [text.strip() for text in texts]
        # generate returns each input's sequences together, in input order.
        return [captions[i * n : (i + 1) * n] for i in range(len(images))]

    @contextmanager
    def _seeded(self, seed: int) -> Iterator[None]:
        # fork_rng restores the global RNG afterwards, so unseeded requests never become predictable
        # from a seed someone else chose.
        with torch.random.fork_rng(devices=self._rng_devices):
            torch.manual_seed(seed)
            yield


def _generated_part(output: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The generated tokens only: the prompt is never part of a caption.

    Decoder-only language models (OPT) return the input ids followed by the continuation; encoder-decoder
    ones (Flan-T5), and transformers versions that fed BLIP-2's language model embeddings only, return just
    the continuation. Slicing by position rather than stripping the prompt text keeps a caption intact
    when the model itself happens to write the prompt's words.
    """
    length = input_ids.shape[1]
    if output.shape[1] >= length and torch.equal(output[:, :length], input_ids.to(output.device)):
        return output[:, length:]
    return output
