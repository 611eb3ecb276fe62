"""What identifies the reasoner's model: shown in responses and hashed into cache keys."""

from __future__ import annotations

import json
from pathlib import Path

from cir_common.checksums import weights_sha256
from cir_reasoner.generation import BackendModel
from cir_reasoner.settings import Backend


def describe_model(model: str, backend: Backend, weights_sha: str | None = None) -> BackendModel:
    """A local folder is named by its folder name and the sha256 of its weights; a hub id by itself."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return BackendModel(name=model, revision="", family="", details={"backend": backend})
    digest = weights_sha or weights_sha256(folder)
    return BackendModel(
        name=folder.resolve().name,
        revision=f"sha256:{digest}",
        family=_model_type(folder),
        details={"backend": backend, "path": str(folder.resolve())},
    )


def _model_type(folder: Path) -> str:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    return str(config.get("model_type", ""))
