"""Lets the PyPI torchvision wheel import next to a CPU-only torch.

The PyPI torchvision wheel is a CUDA build: its ``_C.so`` links libtorch_cuda and fails
to load beside CPU torch, after which ``import torchvision`` dies registering fake kernels
for operators that were never defined. This hook, installed as a ``.pth`` file by
``scripts/install-dev.sh`` on CPU machines only, runs just before torchvision is first
imported: if ``_C.so`` loads, it does nothing; otherwise it defines the two operator
schemas torchvision expects so that its pure-Python parts (transforms) work.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _extension_loads(package_dir: Path) -> bool:
    import torch

    for candidate in package_dir.glob("_C*.so"):
        try:
            torch.ops.load_library(str(candidate))
            return True
        except (OSError, RuntimeError):
            return False
    return False


_fragments: list[object] = []


def _define_missing_schemas() -> None:
    import torch

    library = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        with contextlib.suppress(RuntimeError):  # already defined by an earlier fragment
            library.define(schema)
    _fragments.append(library)  # a Library object unregisters its ops when collected


class _TorchvisionFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torchvision")
        if spec is not None and spec.origin is not None and not _extension_loads(Path(spec.origin).parent):
            _define_missing_schemas()
        return spec


def install() -> None:
    if not any(isinstance(f, _TorchvisionFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchvisionFinder())
