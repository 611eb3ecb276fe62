"""The mapping network Phi (CLIP image embedding -> one pseudo word token) and its checkpoint loader.

Two published layouts are read:
- LinCIR / SEARLE / CVSI: `{"Phi": state_dict}` of the GELU MLP below (`layers.0/3/6`).
- Pic2Word: `{"state_dict_img2text": state_dict, ...}` saved from a DataParallel module (`module.` prefixes)
  of its IM2TEXT network, a different MLP: n blocks of Linear -> Dropout -> ReLU (`layers.{i}.0`), then
  `fc_out`. Its weights cannot be renamed into Phi's shape, so it is rebuilt as `Pic2WordMapping`.
Both are frozen and used in eval mode only.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from cir_common.checksums import sha256_file
from cir_common.errors import ConfigError

PhiArchitecture = Literal["phi", "pic2word"]

_PHI_KEYS = (
    "layers.0.weight",
    "layers.0.bias",
    "layers.3.weight",
    "layers.3.bias",
    "layers.6.weight",
    "layers.6.bias",
)
_PIC2WORD_BLOCK = re.compile(r"^layers\.(\d+)\.0\.weight$")


class Phi(nn.Module):
    """LinCIR/SEARLE mapping network (method 2.1): a 3-layer GELU MLP, dropout 0.5 (inactive in eval)."""

    def __init__(
        self, input_dim: int, token_dim: int, hidden_dim: int | None = None, dropout: float = 0.5
    ) -> None:
        super().__init__()
        hidden = hidden_dim if hidden_dim is not None else 4 * input_dim
        self.input_dim = input_dim
        self.hidden_dim = hidden
        self.token_dim = token_dim
        self.layers = nn.Sequential(
            nn.Linear(input_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, token_dim),
        )

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(image_embedding)


class Pic2WordMapping(nn.Module):
    """Pic2Word's IM2TEXT layout, rebuilt so its published weights load with strict key matching."""

    def __init__(
        self, input_dim: int, token_dim: int, hidden_dim: int, num_blocks: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.token_dim = token_dim
        blocks = []
        width = input_dim
        for _ in range(num_blocks):
            blocks.append(nn.Sequential(nn.Linear(width, hidden_dim), nn.Dropout(dropout), nn.ReLU()))
            width = hidden_dim
        self.layers = nn.Sequential(*blocks)
        self.fc_out = nn.Linear(hidden_dim, token_dim)

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.layers(image_embedding))


@dataclass(frozen=True)
class LoadedPhi:
    """A mapping network ready for inference, with what identifies it in responses and caches."""

    module: nn.Module
    sha256: str
    input_dim: int
    token_dim: int
    hidden_dim: int
    architecture: PhiArchitecture
    path: Path


def load_phi(
    path: str | Path,
    expected_input_dim: int | None,
    expected_token_dim: int | None,
    device: str = "cpu",
) -> LoadedPhi:
    """Load a published mapping-network checkpoint, check it fits the CLIP model, return it in eval mode.

    `expected_input_dim` is the CLIP embedding (projection) dim, `expected_token_dim` the text transformer
    width; None skips that check. Dims are read from the weights, never assumed.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(
            f"mapping network checkpoint {file} does not exist; check the mapping_networks setting"
        )
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(
            f"mapping network checkpoint {file} holds objects other than tensors and plain containers, "
            f"which are not loaded for safety ({error}); re-save it as {{'Phi': state_dict}}"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ConfigError(
            f"mapping network checkpoint {file} is not a readable torch file: {error}"
        ) from error

    state_dict = _strip_module_prefix(_find_state_dict(payload, file))
    if all(key in state_dict for key in _PHI_KEYS):
        module: Phi | Pic2WordMapping = _build_phi(state_dict, file)
        architecture: PhiArchitecture = "phi"
    elif "fc_out.weight" in state_dict and any(_PIC2WORD_BLOCK.match(key) for key in state_dict):
        module = _build_pic2word(state_dict, file)
        architecture = "pic2word"
    else:
        raise ConfigError(
            f"mapping network checkpoint {file} has neither the Phi layout (layers.0/3/6) nor Pic2Word's "
            f"(layers.N.0 + fc_out); its keys start with {sorted(state_dict)[:6]}"
        )

    _check_dims(module, expected_input_dim, expected_token_dim, file)
    module.to(device)
    module.eval()
    module.requires_grad_(False)
    return LoadedPhi(
        module=module,
        sha256=sha256_file(file),
        input_dim=module.input_dim,
        token_dim=module.token_dim,
        hidden_dim=module.hidden_dim,
        architecture=architecture,
        path=file.resolve(),
    )


def _find_state_dict(payload: object, file: Path) -> dict[str, torch.Tensor]:
    # LinCIR/SEARLE save under the class name; Pic2Word saves its full training checkpoint.
    if isinstance(payload, Mapping):
        for key in ("Phi", "state_dict_img2text"):
            if key in payload:
                inner = payload[key]
                if not isinstance(inner, Mapping):
                    raise ConfigError(f"mapping network checkpoint {file}: entry {key!r} is not a state dict")
                return _tensors_only(inner, file)
        if payload and all(isinstance(value, torch.Tensor) for value in payload.values()):
            return _tensors_only(payload, file)
        raise ConfigError(
            f"mapping network checkpoint {file} has no 'Phi' or 'state_dict_img2text' entry "
            f"(top-level keys: {sorted(map(str, payload))[:8]})"
        )
    raise ConfigError(
        f"mapping network checkpoint {file} holds a {type(payload).__name__}, not a dict of weights"
    )


def _tensors_only(mapping: Mapping[object, object], file: Path) -> dict[str, torch.Tensor]:
    result: dict[str, torch.Tensor] = {}
    for key, value in mapping.items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"mapping network checkpoint {file}: {key!r} is not a tensor")
        result[str(key)] = value
    return result


def _strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Checkpoints saved from DataParallel/DDP wrappers prefix every key with "module.".
    if state_dict and all(key.startswith("module.") for key in state_dict):
        return {key.removeprefix("module."): value for key, value in state_dict.items()}
    return state_dict


def _build_phi(state_dict: dict[str, torch.Tensor], file: Path) -> Phi:
    hidden, input_dim = state_dict["layers.0.weight"].shape
    token_dim = state_dict["layers.6.weight"].shape[0]
    module = Phi(int(input_dim), int(token_dim), hidden_dim=int(hidden))
    _load_strict(module, state_dict, file)
    return module


def _build_pic2word(state_dict: dict[str, torch.Tensor], file: Path) -> Pic2WordMapping:
    block_ids = sorted(int(m.group(1)) for key in state_dict if (m := _PIC2WORD_BLOCK.match(key)))
    if block_ids != list(range(len(block_ids))):
        raise ConfigError(
            f"mapping network checkpoint {file}: Pic2Word blocks are not numbered 0..n ({block_ids})"
        )
    hidden, input_dim = state_dict["layers.0.0.weight"].shape
    token_dim = state_dict["fc_out.weight"].shape[0]
    module = Pic2WordMapping(int(input_dim), int(token_dim), int(hidden), num_blocks=len(block_ids))
    _load_strict(module, state_dict, file)
    return module


def _load_strict(module: nn.Module, state_dict: dict[str, torch.Tensor], file: Path) -> None:
    try:
        module.load_state_dict({key: value.float() for key, value in state_dict.items()}, strict=True)
    except RuntimeError as error:
        raise ConfigError(
            f"mapping network checkpoint {file} does not match its own layout: {error}"
        ) from error


def _check_dims(
    module: Phi | Pic2WordMapping, expected_input: int | None, expected_token: int | None, file: Path
) -> None:
    input_ok = expected_input is None or module.input_dim == expected_input
    token_ok = expected_token is None or module.token_dim == expected_token
    if not (input_ok and token_ok):
        found = f"maps a {module.input_dim}-dim image embedding to a {module.token_dim}-dim token"
        wanted = f"embedding dim {expected_input} and text width {expected_token}"
        raise ConfigError(
            f"mapping network {file} {found}, but the CLIP model has {wanted}; "
            "use a mapping network trained for this CLIP model"
        )
