"""The encoder's model work, synchronous and batch-shaped: images, texts, composed prompts.

Everything here runs on the batcher's worker thread. Vectors come out raw (unnormalised,
float32): Phi needs the raw image embedding, and the service normalises per request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from cir_common.errors import ConfigError, FailedPrecondition, InvalidArgument
from cir_common.vocabulary import Preprocessing
from cir_encoder.clip_loading import LoadedClip
from cir_encoder.instructcir_serving import CHECKPOINT_SETTING, InstructCirModel
from cir_encoder.phi import LoadedPhi
from cir_encoder.preprocessing import (
    DEFAULT_MAX_ASPECT_RATIO,
    DEFAULT_MAX_CANVAS_PIXELS,
    build_image_transform,
)
from cir_encoder.pseudo_tokens import encode_with_pseudo_tokens, text_tower

PLACEHOLDER = "$"


@dataclass(frozen=True)
class TokenizedTexts:
    ids: torch.Tensor
    token_counts: list[int]
    truncated: list[bool]


class EncoderEngine:
    def __init__(
        self,
        clip: LoadedClip,
        mapping_networks: dict[str, LoadedPhi],
        default_mapping_network: str,
        target_pad_ratio: float,
        *,
        max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
        max_canvas_pixels: int = DEFAULT_MAX_CANVAS_PIXELS,
        instructcir: InstructCirModel | None = None,
    ) -> None:
        self.clip = clip
        self.instructcir = instructcir
        self.mapping_networks = mapping_networks
        self.default_mapping_network = default_mapping_network
        self.target_pad_ratio = target_pad_ratio
        # Precision is part of the identity: fp16 and fp32 replicas sharing a cache must not mix vectors.
        self.identity = f"{clip.model_name}@{clip.checkpoint_sha256}/{clip.precision}"
        self._tower = text_tower(clip.model)
        self._transforms: dict[Preprocessing, Callable[[Image.Image], Any]] = {
            kind: build_image_transform(
                kind,
                clip.preprocess,
                target_pad_ratio,
                max_aspect_ratio=max_aspect_ratio,
                max_canvas_pixels=max_canvas_pixels,
            )
            for kind in Preprocessing
        }
        self.placeholder_token_id = self._single_token_id(PLACEHOLDER)
        self._image_dtype = _image_input_dtype(clip.model)

    @property
    def device(self) -> torch.device:
        return next(self.clip.model.parameters()).device

    def _single_token_id(self, word: str) -> int:
        ids = self.clip.tokenizer([word])[0].tolist()
        body = [i for i in ids[1:] if i != 0][:-1]  # between start- and end-of-text, padding dropped
        if len(body) != 1:
            raise ConfigError(
                f"the tokenizer splits the placeholder {word!r} into {len(body)} tokens, not one"
            )
        return int(body[0])

    def resolve_mapping_network(self, name: str) -> tuple[str, LoadedPhi]:
        chosen = name or self.default_mapping_network
        phi = self.mapping_networks.get(chosen)
        if phi is None:
            known = ", ".join(sorted(self.mapping_networks)) or "none configured"
            raise InvalidArgument(f"unknown mapping_network {chosen!r}; known: {known}")
        return chosen, phi

    def pixels(self, kind: Preprocessing, images: Sequence[Image.Image]) -> torch.Tensor:
        """The images preprocessed as `kind` says, stacked on the model's device in its input dtype."""
        transform = self._transforms[kind]
        # fp16 / bf16 models take their pixels in the patch embedding's dtype (open_clip does not cast).
        return torch.stack([transform(image) for image in images]).to(self.device, self._image_dtype)

    @torch.inference_mode()
    def embed_images(self, kind: Preprocessing, images: Sequence[Image.Image]) -> np.ndarray:
        features = self.clip.model.encode_image(self.pixels(kind, images))
        return features.float().cpu().numpy()

    def require_instructcir(self) -> InstructCirModel:
        if self.instructcir is None:
            raise FailedPrecondition(
                f"this encoder loads no InstructCIR checkpoint: set {CHECKPOINT_SETTING} (profile [encoder] "
                "instructcir_checkpoint) to one written by `cir train instructcir`, and restart it"
            )
        return self.instructcir

    def embed_instructcir_queries(
        self, kind: Preprocessing, images: Sequence[Image.Image], texts: Sequence[str], fused: bool
    ) -> np.ndarray:
        """InstructCIR query embeddings (raw; Eq. 3's fused ones unit-norm) of images with instructions."""
        model = self.require_instructcir()
        return model.embed_queries(self.pixels(kind, images), self.tokenize(texts).ids, fused)

    def embed_instructcir_targets(self, kind: Preprocessing, images: Sequence[Image.Image]) -> np.ndarray:
        """Raw InstructCIR target embeddings: the EMA tower with the null-text token."""
        return self.require_instructcir().embed_targets(self.pixels(kind, images))

    def tokenize(self, texts: Sequence[str]) -> TokenizedTexts:
        ids = self.clip.tokenizer(list(texts))
        counts = [self._token_count(text) for text in texts]
        context = self.clip.context_length
        return TokenizedTexts(ids=ids, token_counts=counts, truncated=[count > context for count in counts])

    def _token_count(self, text: str) -> int:
        encode = getattr(self.clip.tokenizer, "encode", None)
        if encode is None:  # tokenizers without a raw encode: report what fits
            return int((self.clip.tokenizer([text])[0] != 0).sum())
        return len(encode(text)) + 2  # start- and end-of-text tokens

    @torch.inference_mode()
    def embed_texts(self, token_ids: torch.Tensor) -> np.ndarray:
        features = self.clip.model.encode_text(token_ids.to(self.device))
        return features.float().cpu().numpy()

    @torch.inference_mode()
    def pseudo_tokens(self, phi: LoadedPhi, image_embeddings: np.ndarray) -> np.ndarray:
        dtype = next(phi.module.parameters()).dtype
        tokens = phi.module(torch.from_numpy(image_embeddings).to(self.device, dtype))
        return tokens.float().cpu().numpy()

    @torch.inference_mode()
    def embed_composed(self, token_ids: torch.Tensor, pseudo_tokens: np.ndarray) -> np.ndarray:
        features = encode_with_pseudo_tokens(
            self._tower,
            token_ids.to(self.device),
            torch.from_numpy(pseudo_tokens).to(self.device),
            self.placeholder_token_id,
        )
        return features.float().cpu().numpy()


def _image_input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype the vision tower's first layer computes in: what its pixel input must be."""
    visual = getattr(model, "visual", model)
    for module in visual.modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            return module.weight.dtype
    return next(visual.parameters()).dtype
