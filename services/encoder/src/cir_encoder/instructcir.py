"""InstructCIR (method.md 4.2): a CLIP ViT with cross-attention to the instruction's text tokens.

The query tower is a copy of the CLIP's image tower whose every transformer block gets a cross-attention
sublayer between self-attention and the MLP (queries = image tokens, keys/values = the frozen CLIP text
encoder's per-token outputs after ln_final, the backbone's head count, Xavier init):

    x = x + attn(ln_1(x));  x = x + xattn(ln_x(x), words);  x = x + mlp(ln_2(x))

A predictor MLP on concat(image embedding, plain CLIP text embedding) gives the query embedding. With
`residual_query` (a named variant, not the paper's) the query is the image embedding plus the predictor's
output, and the cross-attention output projections and the predictor's last layer start at zero: the
untrained network is the CLIP's image-only query and training learns the change on top of it, which a
catalog of a few thousand triplets cannot do from a random predictor without losing the image similarity.
Target images go through an EMA copy of the tower (`update_target`, never gradients) whose only key/value is
a null-text token. Eq. 2 is InfoNCE over the batch; Eq. 3 mixes normalize(query) and normalize(text
embedding) with a learned weight sigmoid(fusion_logit).

The CLIP's text tower is only referenced (frozen, served by the encoder's own CLIP), so a checkpoint holds
the image towers, cross-attention, predictor, null token and fusion logit (format: docs/instructcir.md).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from cir_common.checksums import sha256_file
from cir_common.errors import ConfigError
from cir_encoder.pseudo_tokens import TextTower, text_tower

CHECKPOINT_FORMAT = "cir-instructcir/1"
# open_clip's CLIP tokenizer pads with id 0; those positions are hidden from the cross-attention.
PAD_TOKEN_ID = 0
_CHECKPOINT_KEYS = ("format", "config", "clip_identity", "architecture", "training", "state_dict")
_IDENTITY_KEYS = ("model", "sha256")
_TARGET_PREFIX = "target_tower."


@dataclass(frozen=True)
class InstructCirConfig:
    """Shape and training constants of an InstructCIR network (stored in its checkpoint)."""

    predictor_hidden_dim: int = 1024
    # Eq. 2's temperature.
    temperature: float = 0.07
    # Weight of the old target parameters in one EMA step.
    ema_decay: float = 0.995
    # Whether the network carries Eq. 3's learned fusion weight.
    fusion: bool = False
    # Eq. 3's initial query weight (sigmoid of the logit), before the fusion stage learns it.
    fusion_init: float = 0.5
    # The residual variant (module docstring); False is the paper's network.
    residual_query: bool = False

    def __post_init__(self) -> None:
        if self.predictor_hidden_dim <= 0:
            raise ValueError(f"predictor_hidden_dim must be positive, got {self.predictor_hidden_dim}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be within [0, 1], got {self.ema_decay}")
        if not 0.0 < self.fusion_init < 1.0:
            raise ValueError(f"fusion_init must be within (0, 1), got {self.fusion_init}")


class CrossAttentionBlock(nn.Module):
    """A copied backbone block with a text cross-attention sublayer after its self-attention."""

    def __init__(self, block: nn.Module, text_width: int, zero_output: bool = False) -> None:
        super().__init__()
        self.block = block
        width = int(block.ln_1.normalized_shape[0])
        heads = int(block.attn.num_heads)
        self.ln_x = type(block.ln_1)(width)
        self.cross_attn = nn.MultiheadAttention(
            width, heads, kdim=text_width, vdim=text_width, batch_first=True
        )
        # One packed projection when the text is as wide as the image tokens, three otherwise.
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        for projection in (getattr(self.cross_attn, name) for name in names):
            if projection is not None:
                nn.init.xavier_uniform_(projection)
        if zero_output:  # residual_query: the sublayer starts as the identity of the backbone block
            nn.init.zeros_(self.cross_attn.out_proj.weight)
        else:
            nn.init.xavier_uniform_(self.cross_attn.out_proj.weight)
        nn.init.zeros_(self.cross_attn.in_proj_bias)
        nn.init.zeros_(self.cross_attn.out_proj.bias)

    def cross_attention(
        self, x: torch.Tensor, words: torch.Tensor, padding: torch.Tensor | None
    ) -> torch.Tensor:
        """The cross-attention sublayer's output, (n, image tokens, width), before the residual."""
        # Under open_clip's mixed precisions the text tower hands back half-precision words while the new
        # layers stay float32: attend in the image tokens' dtype.
        words = words.to(x.dtype)
        return self.cross_attn(self.ln_x(x), words, words, key_padding_mask=padding, need_weights=False)[0]

    def forward(self, x: torch.Tensor, words: torch.Tensor, padding: torch.Tensor | None) -> torch.Tensor:
        block = self.block
        x = x + block.ls_1(block.attention(block.ln_1(x)))
        x = x + self.cross_attention(x, words, padding)
        return x + block.ls_2(block.mlp(block.ln_2(x)))


class InstructCirTower(nn.Module):
    """The CLIP image tower (copied) with cross-attention blocks, plus the null-text token for targets."""

    def __init__(self, visual: nn.Module, null_token: torch.Tensor, zero_output: bool = False) -> None:
        super().__init__()
        _check_vision_tower(visual)
        visual = copy.deepcopy(visual)
        self.conv1 = visual.conv1
        self.class_embedding = visual.class_embedding
        self.positional_embedding = visual.positional_embedding
        self.patch_dropout = visual.patch_dropout
        self.ln_pre = visual.ln_pre
        self.blocks = nn.ModuleList(
            CrossAttentionBlock(block, int(null_token.shape[-1]), zero_output)
            for block in visual.transformer.resblocks
        )
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.pool_type = str(visual.pool_type)
        self.final_ln_after_pool = bool(visual.final_ln_after_pool)
        # No gradient reaches it: targets come from the EMA copy only; it is the checkpoint's null text.
        self.null_token = nn.Parameter(null_token.detach().clone().reshape(1, -1), requires_grad=False)

    def forward(
        self, images: torch.Tensor, words: torch.Tensor, padding: torch.Tensor | None
    ) -> torch.Tensor:
        """Raw image embeddings (n, embed_dim) attending to `words` (n, tokens, text width)."""
        x = self.conv1(images.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)  # (n, patches, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(self.patch_dropout(x))
        for block in self.blocks:
            x = block(x, words, padding)
        pooled = self.ln_post(self._pool(x)) if self.final_ln_after_pool else self._pool(self.ln_post(x))
        return pooled @ self.proj if self.proj is not None else pooled

    def encode_null_text(self, images: torch.Tensor) -> torch.Tensor:
        """Raw embeddings of `images` with the null-text token as the only key/value."""
        words = self.null_token.to(self.conv1.weight.dtype).expand(images.shape[0], 1, -1)
        return self(images, words, None)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_type == "avg":
            return x[:, 1:].mean(dim=1)
        return x[:, 0]


class InstructCirNetwork(nn.Module):
    """InstructCIR on top of a (frozen, unregistered) open_clip CLIP; the module docstring has the design."""

    def __init__(self, clip: nn.Module, config: InstructCirConfig = InstructCirConfig()) -> None:
        super().__init__()
        self.config = config
        # A plain reference (not a submodule): the text tower stays out of state_dict, DDP and optimisers.
        self._text: TextTower = text_tower(clip)
        reference = next(clip.visual.parameters())
        self.embed_dim = int(clip.visual.output_dim)
        self.text_width = int(self._text.token_embedding.embedding_dim)
        self.tower = InstructCirTower(clip.visual, self._empty_text_token(), config.residual_query)
        self.predictor = nn.Sequential(
            nn.Linear(2 * self.embed_dim, config.predictor_hidden_dim),
            nn.GELU(),
            nn.Linear(config.predictor_hidden_dim, self.embed_dim),
        )
        if config.residual_query:
            nn.init.zeros_(self.predictor[-1].weight)
            nn.init.zeros_(self.predictor[-1].bias)
        self.fusion_logit = (
            nn.Parameter(torch.logit(torch.tensor(config.fusion_init, dtype=torch.float64)).float())
            if config.fusion
            else None
        )
        self.target_tower = copy.deepcopy(self.tower).requires_grad_(False)
        self.to(device=reference.device, dtype=reference.dtype)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor, fused: bool = False) -> torch.Tensor:
        """The query embedding (raw), or Eq. 3's fused one; the entry point DistributedDataParallel wraps."""
        return self.fused_query(images, tokens) if fused else self.encode_query(images, tokens)

    def encode_query(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Raw query embeddings (n, embed_dim) of reference images with their instructions' token ids."""
        return self._query_and_text(images, tokens)[0]

    def encode_target(self, images: torch.Tensor) -> torch.Tensor:
        """Raw target embeddings (n, embed_dim): the EMA tower with the null-text token."""
        return self.target_tower.encode_null_text(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """The plain (raw) CLIP text embedding of token ids."""
        return self._encode_words(tokens)[2]

    def fused_query(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Eq. 3: normalize(w * normalize(query) + (1 - w) * normalize(text)), w the learned weight."""
        if self.fusion_logit is None:
            raise ValueError("this InstructCIR network has no fusion weight (trained without --fusion)")
        query, text = self._query_and_text(images, tokens)
        weight = torch.sigmoid(self.fusion_logit).to(query.dtype)
        mixed = weight * F.normalize(query, dim=-1) + (1 - weight) * F.normalize(text, dim=-1)
        return F.normalize(mixed, dim=-1)

    @property
    def fusion_weight(self) -> float | None:
        """Eq. 3's weight of the query (the text embedding gets 1 - weight); None without fusion."""
        if self.fusion_logit is None:
            return None
        return float(torch.sigmoid(self.fusion_logit.detach().float()))

    @torch.no_grad()
    def update_target(self) -> None:
        """One EMA step: target = decay * target + (1 - decay) * online, for every parameter and buffer."""
        decay = self.config.ema_decay
        online = dict(self.tower.named_parameters())
        for name, target in self.target_tower.named_parameters():
            target.mul_(decay).add_(online[name].detach(), alpha=1 - decay)
        online_buffers = dict(self.tower.named_buffers())
        for name, buffer in self.target_tower.named_buffers():
            buffer.copy_(online_buffers[name])

    def _query_and_text(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        words, padding, text = self._encode_words(tokens)
        image = self.tower(images, words, padding)
        text = text.to(image.dtype)
        predicted = self.predictor(torch.cat([image, text], dim=-1))
        return (image + predicted if self.config.residual_query else predicted), text

    @torch.no_grad()
    def _encode_words(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token text outputs after ln_final, their padding mask, and the pooled projected embedding."""
        tower = self._text
        tokens = tokens.to(tower.token_embedding.weight.device)
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(tokens).to(cast_dtype) + tower.positional_embedding.to(cast_dtype)
        words = tower.ln_final(tower.transformer(x, attn_mask=tower.attn_mask))
        pooled = text_global_pool(words, tokens, tower.pool_type, eos_token_id=tower.eos_token_id)
        if isinstance(tower.text_projection, nn.Linear):
            pooled = tower.text_projection(pooled)
        elif tower.text_projection is not None:
            pooled = pooled @ tower.text_projection
        return words, tokens == PAD_TOKEN_ID, pooled

    @torch.no_grad()
    def _empty_text_token(self) -> torch.Tensor:
        # The text encoder's output at the end-of-text of an empty instruction: "no text" in its own words.
        sot, eot = _special_token_ids(self._text.token_embedding.num_embeddings)
        context = int(self._text.positional_embedding.shape[0])
        tokens = torch.zeros(1, context, dtype=torch.long, device=self._text.token_embedding.weight.device)
        tokens[0, 0], tokens[0, 1] = sot, eot
        words, _, _ = self._encode_words(tokens)
        return words[0, 1].float()


def contrastive_loss(query: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 2: InfoNCE of query i against the batch's targets, its own target the positive."""
    logits = F.normalize(query.float(), dim=-1) @ F.normalize(target.float(), dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(query), device=logits.device))


@dataclass(frozen=True)
class LoadedInstructCir:
    """An InstructCIR checkpoint loaded onto its CLIP, with what identifies it."""

    network: InstructCirNetwork
    config: InstructCirConfig
    sha256: str
    path: str
    clip_identity: dict[str, str]
    training: dict[str, Any] = field(default_factory=dict)


def architecture_of(network: InstructCirNetwork) -> dict[str, int]:
    """The CLIP shapes a checkpoint depends on (checked on load before any tensor is copied)."""
    first = network.tower.blocks[0]
    return {
        "embed_dim": network.embed_dim,
        "text_width": network.text_width,
        "vision_width": int(first.ln_x.normalized_shape[0]),
        "vision_layers": len(network.tower.blocks),
        "vision_heads": int(first.cross_attn.num_heads),
        "image_tokens": int(network.tower.positional_embedding.shape[0]),
    }


def save_instructcir(
    path: str | Path, network: InstructCirNetwork, *, clip_identity: dict[str, str], training: dict
) -> None:
    """Write `network` as one torch file (format CHECKPOINT_FORMAT, docs/instructcir.md), atomically."""
    missing = [key for key in _IDENTITY_KEYS if not clip_identity.get(key)]
    if missing:
        raise ValueError(f"clip_identity needs {', '.join(missing)} (the CLIP the network was trained on)")
    state = {name: tensor.detach().cpu().clone() for name, tensor in network.state_dict().items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(network.config),
        "clip_identity": {str(key): str(value) for key, value in clip_identity.items()},
        "architecture": architecture_of(network),
        "training": dict(training),
        "state_dict": {k: v for k, v in state.items() if not k.startswith(_TARGET_PREFIX)},
        "target_state_dict": {
            k.removeprefix(_TARGET_PREFIX): v for k, v in state.items() if k.startswith(_TARGET_PREFIX)
        },
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def load_instructcir(path: str, clip: nn.Module, clip_identity: dict[str, str]) -> LoadedInstructCir:
    """Load a checkpoint onto `clip` (the CLIP identified by `clip_identity`); the network is in eval mode.

    ConfigError, naming the file and what was expected, when the file is missing, is not an InstructCIR
    checkpoint, has another format version, does not fit the CLIP's shapes, or was trained on another CLIP.
    """
    file = Path(path).expanduser()
    expected = f"an InstructCIR checkpoint ({CHECKPOINT_FORMAT}) written by `cir train instructcir`"
    if not file.is_file():
        raise ConfigError(f"InstructCIR checkpoint {file} does not exist; expected {expected}")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        # torch's own message is pages long; its kind says enough next to what was expected.
        raise ConfigError(
            f"InstructCIR checkpoint {file} could not be read as a torch file of tensors and plain values "
            f"({type(error).__name__}); expected {expected}"
        ) from error
    if not isinstance(payload, dict) or any(key not in payload for key in _CHECKPOINT_KEYS):
        found = sorted(payload) if isinstance(payload, dict) else type(payload).__name__
        raise ConfigError(
            f"{file} is not an InstructCIR checkpoint: expected a dict with {', '.join(_CHECKPOINT_KEYS)}, "
            f"found {found}"
        )
    if payload["format"] != CHECKPOINT_FORMAT:
        raise ConfigError(
            f"InstructCIR checkpoint {file} has format {payload['format']!r}; this encoder reads "
            f"{CHECKPOINT_FORMAT!r} (retrain or convert it with this suite's `cir train instructcir`)"
        )
    trained_on = {str(k): str(v) for k, v in payload["clip_identity"].items()}
    if trained_on.get("sha256") != clip_identity.get("sha256"):
        raise ConfigError(
            f"InstructCIR checkpoint {file} was trained on CLIP {trained_on.get('model')!r} "
            f"(weights sha256 {trained_on.get('sha256')}), but the encoder serves "
            f"{clip_identity.get('model')!r} (sha256 {clip_identity.get('sha256')}); set the encoder's CLIP "
            f"to the one it was trained on, or train a checkpoint for this CLIP"
        )
    config = _config_from(payload["config"], file)
    network = InstructCirNetwork(clip, config)
    wanted = architecture_of(network)
    if payload["architecture"] != wanted:
        raise ConfigError(
            f"InstructCIR checkpoint {file} does not fit the encoder's CLIP: it expects shapes "
            f"{payload['architecture']}, the CLIP has {wanted}"
        )
    state = dict(payload["state_dict"])
    state.update({f"{_TARGET_PREFIX}{k}": v for k, v in payload.get("target_state_dict", {}).items()})
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConfigError(
            f"InstructCIR checkpoint {file} does not fit the encoder's CLIP ({config}): {error}"
        ) from error
    network.eval()
    network.requires_grad_(False)
    return LoadedInstructCir(
        network=network,
        config=config,
        sha256=sha256_file(file),
        path=str(file),
        clip_identity=trained_on,
        training=dict(payload["training"]),
    )


def _config_from(values: object, file: Path) -> InstructCirConfig:
    known = {f.name for f in dataclasses.fields(InstructCirConfig)}
    if not isinstance(values, dict) or not set(values) <= known:
        unknown = sorted(set(values) - known) if isinstance(values, dict) else values
        raise ConfigError(
            f"InstructCIR checkpoint {file} has a config this encoder does not know ({unknown}); "
            f"expected keys among {sorted(known)}"
        )
    try:
        return InstructCirConfig(**values)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"InstructCIR checkpoint {file} has an invalid config: {error}") from error


def _check_vision_tower(visual: nn.Module) -> None:
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    usable = (
        all(hasattr(visual, name) for name in needed)
        and getattr(visual, "attn_pool", None) is None
        and blocks is not None
        and all(isinstance(getattr(b, "attn", None), nn.MultiheadAttention) for b in blocks)
        and all(b.attn.batch_first for b in blocks)
    )
    if not usable:
        raise ConfigError(
            f"InstructCIR needs an open_clip ViT image tower (conv patches, class token, batch-first "
            f"nn.MultiheadAttention blocks, no attentional pooler); got {type(visual).__name__}"
        )


def _special_token_ids(vocab_size: int) -> tuple[int, int]:
    # open_clip's CLIP BPE puts <start_of_text> and <end_of_text> at the end of its vocabulary.
    return vocab_size - 2, vocab_size - 1
