"""Content hashes of model files: what identifies a checkpoint in model info and cache keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cir_common.errors import ConfigError

WEIGHT_PATTERNS = ("*.safetensors", "*.bin")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks (checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(folder: Path, patterns: tuple[str, ...] = WEIGHT_PATTERNS) -> str:
    """sha256 over a model folder's weight files, in name order (one file: that file's own sha256)."""
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if not files:
        raise ConfigError(f"model folder {folder} holds no {' or '.join(patterns)} weight file")
    file_hashes = [(p.name, sha256_file(p)) for p in files]
    if len(file_hashes) == 1:
        return file_hashes[0][1]
    combined = hashlib.sha256()
    for name, digest in file_hashes:
        combined.update(f"{name}:{digest}\n".encode())
    return combined.hexdigest()
