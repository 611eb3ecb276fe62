"""Where and in what precision a torch model runs, from the `device` / `dtype` settings.

Imports torch lazily: cir_common itself must import without it (the retriever has no torch).
"""

from __future__ import annotations

from typing import Any

from cir_common.errors import ConfigError

_DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def resolve_device(preference: str, who: str = "model") -> str:
    """ "auto" -> "cuda" when torch sees a GPU, else "cpu"; an explicit device must exist."""
    import torch

    choice = preference.strip().lower()
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cpu":
        return "cpu"
    if choice == "cuda" or choice.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{who} device {preference!r} was asked for but torch sees no CUDA GPU; use cpu or auto"
            )
        index = int(choice.split(":", 1)[1]) if ":" in choice else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"{who} device {preference!r}: only {torch.cuda.device_count()} CUDA device(s) visible"
            )
        return choice
    if choice == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{who} device 'mps' was asked for but is not available; use cpu or auto")
        return "mps"
    raise ConfigError(f"unknown {who} device {preference!r}; use auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str, device: str, who: str = "model") -> Any:
    """The torch dtype for a setting; "auto" = fp16 on CUDA (what GPUs serve fast), fp32 elsewhere."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPE_NAMES:
        raise ConfigError(f"unknown {who} dtype {dtype!r}; use auto, float32, float16 or bfloat16")
    return getattr(torch, _DTYPE_NAMES[dtype])
