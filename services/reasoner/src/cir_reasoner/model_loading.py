"""Production loading of the reasoner's LLM: in-process through transformers, or as a vLLM engine.

Both read the same folder (config.json, weights, tokenizer, chat template). vLLM starts its engine core in
a separate process with spawn, so a program that calls `start_vllm_engine` needs a `__main__` guard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cir_common.checksums import weights_sha256
from cir_common.errors import ConfigError
from cir_common.torch_placement import resolve_device, resolve_dtype
from cir_common.vocabulary import Precision

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase
    from vllm.v1.engine.async_llm import AsyncLLM

# vLLM's names of the precisions a causal LM runs in (open_clip's pure_* ones are the encoder's only).
_VLLM_DTYPES = {
    Precision.AUTO: "auto",
    Precision.FP32: "float32",
    Precision.FP16: "float16",
    Precision.BF16: "bfloat16",
}


@dataclass(frozen=True)
class LoadedCausalLM:
    """A causal LM in eval mode with a left-padding tokenizer, and what identifies it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    identity: str
    weights_sha256: str | None
    has_chat_template: bool
    max_context: int
    device: str
    dtype: torch.dtype


def load_causal_lm(path: str, device: str, dtype: Precision | str) -> LoadedCausalLM:
    """Load a causal LM and its tokenizer from a folder (or a hub id where the hub is reachable).

    `device`: "auto" | "cpu" | "cuda[:N]"; `dtype`: "auto" (float16 on CUDA, float32 elsewhere) or
    fp32 / fp16 / bf16 (float32 / float16 / bfloat16). The tokenizer pads on the left so batched
    generation continues each prompt from its last real token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved_device = resolve_device(device, "reasoner")
    torch_dtype = resolve_dtype(dtype, resolved_device, "reasoner")
    folder = Path(path).expanduser()
    is_local = folder.is_dir()
    if not is_local and (path.startswith(("/", ".", "~")) or folder.exists()):
        raise ConfigError(
            f"reasoner model {path!r} is not a folder; point it at a saved transformers model folder"
        )
    source = str(folder) if is_local else path
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    except (OSError, ValueError) as error:
        where = "folder" if is_local else "hub id (no hub here? save the model to a folder and use its path)"
        raise ConfigError(f"could not load the reasoner LLM from {where} {path!r}: {error}") from error
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        # Llama-style tokenizers ship without a pad token; EOS is masked out by the attention mask anyway.
        tokenizer.pad_token = tokenizer.eos_token
    model.to(resolved_device)
    model.eval()
    model.requires_grad_(False)

    if is_local:
        weights_sha = weights_sha256(folder)
        identity = f"{folder.resolve().name}@sha256:{weights_sha}"
    else:
        weights_sha = None
        identity = f"{path}@{getattr(model.config, '_commit_hash', None) or 'unknown-revision'}"
    return LoadedCausalLM(
        model=model,
        tokenizer=tokenizer,
        identity=identity,
        weights_sha256=weights_sha,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        max_context=int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length),
        device=resolved_device,
        dtype=torch_dtype,
    )


def vllm_engine_args(
    path: str,
    max_model_len: int,
    *,
    dtype: Precision | str = Precision.AUTO,
    seed: int = 0,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float | None = None,
    max_num_seqs: int | None = None,
    enforce_eager: bool | None = None,
) -> dict[str, Any]:
    """Keyword arguments for vLLM's `AsyncEngineArgs` serving the model folder `path`.

    Checked here rather than left to vLLM: the folder exists and `max_model_len` fits the model's
    positions (vLLM would otherwise fail deep inside engine start-up, in another process).
    """
    try:
        vllm_dtype = _VLLM_DTYPES[Precision(dtype)]
    except (ValueError, KeyError):
        raise ConfigError(
            f"unknown vLLM dtype {str(dtype)!r}; use {', '.join(_VLLM_DTYPES.values())}"
        ) from None
    if max_model_len <= 0:
        raise ConfigError(f"reasoner max_model_len must be positive, got {max_model_len}")
    folder = Path(path).expanduser()
    if folder.is_dir():
        positions = _config_positions(folder)
        if positions is not None and max_model_len > positions:
            raise ConfigError(
                f"reasoner max_model_len {max_model_len} exceeds the {positions} positions "
                f"of the model in {folder}; lower max_model_len"
            )
        model = str(folder.resolve())
    elif path.startswith(("/", ".", "~")):
        raise ConfigError(f"reasoner model folder {path!r} does not exist")
    else:
        model = path
    args: dict[str, Any] = {
        "model": model,
        "tokenizer": model,
        "max_model_len": max_model_len,
        "dtype": vllm_dtype,
        "seed": seed,
        "tensor_parallel_size": tensor_parallel_size,
        "disable_log_stats": True,
    }
    if gpu_memory_utilization is not None:
        args["gpu_memory_utilization"] = gpu_memory_utilization
    if max_num_seqs is not None:
        args["max_num_seqs"] = max_num_seqs
    if enforce_eager is not None:
        args["enforce_eager"] = enforce_eager
    return args


def start_vllm_engine(path: str, max_model_len: int, **options: Any) -> AsyncLLM:
    """Start vLLM's async engine (`vllm.v1.engine.async_llm.AsyncLLM`) on the model folder.

    `options` are those of `vllm_engine_args`. The caller owns the engine and must call `shutdown()`.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    engine_args = AsyncEngineArgs(**vllm_engine_args(path, max_model_len, **options))
    return AsyncLLM.from_engine_args(engine_args)


def _config_positions(folder: Path) -> int | None:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"reasoner model folder {folder} has no config.json; it must be a saved transformers model"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ConfigError(f"{config_file} is not valid JSON: {error}") from error
    text_config = config.get("text_config", config)
    positions = text_config.get("max_position_embeddings")
    return int(positions) if isinstance(positions, int) else None
