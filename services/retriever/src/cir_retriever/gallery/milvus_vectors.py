"""The Milvus backend's vector layout: which vectors a collection stores, and how a query is expanded to them.

Milvus answers one inner product per search on one stored vector field, and a collection holds at most four
vector fields. Every `GallerySpec` is answered exactly by expanding the query to a concatenation of stored
parts (pure numpy here, checked against `strategies.gallery_matrix(spec, features) @ q` by the tests):

    fused    = [t_c, normalize(t_c), t_v]                          (3d)
    weimocir = [normalize(C_1), ..., normalize(C_R), t_v, mean_r normalize(C_r)]   ((R+2)d)
    cosine_i = normalize(g_i t_c' + (1 - g_i) t_v), t_c' = normalize(t_c) when renormalised   (d each)

    IMAGE                      [0, 0, q]              . fused   = q . t_v
    CVSI dot, gamma g          [g q, 0, (1-g) q]      . fused   = q . (g t_c + (1-g) t_v), any g
    CVSI dot, g, renormalised  [0, g q, (1-g) q]      . fused   = q . (g normalize(t_c) + (1-g) t_v)
    WEIMOCIR coded             [q_1..q_R, q_img, 0]   . weimocir
    WEIMOCIR paper, b          [0..0, (1-b) q, b q]   . weimocir = q . ((1-b) t_v + b mean_r normalize(C_r))
    CVSI cosine, (g, renorm)   q                      . cosine_i, for the (g, renorm) pairs stored (presets)

    INSTRUCTCIR                q                      . instructcir (the normalised target embeddings, d_i)

A collection keeping InstructCIR targets (its manifest names a checkpoint when its data collection is made)
stores them in a fifth vector field, `instructcir`, of their own dimension d_i. milvus-lite 2.5.1 accepts five
vector fields (checked: it creates collections with five and six); a Milvus server refuses more than
proxy.maxVectorFieldNum (4 by default), so serving InstructCIR collections from one needs that raised to 5.
Collections without InstructCIR targets keep the four fields above and work on any server unchanged.

Cosine divides each row by its own norm, which depends on gamma: no expansion of q gives it for an arbitrary
gamma, so only the presets' pairs are stored (plus gamma 0 and 1, which are plain parts of `fused`); any other
is refused with FailedPrecondition rather than approximated.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from cir_common.errors import FailedPrecondition, InvalidArgument
from cir_retriever.fusion import ScoreFunction, normalize
from cir_retriever.gallery.types import GalleryKind, GallerySpec

FUSED = "fused"
WEIMOCIR = "weimocir"
INSTRUCTCIR = "instructcir"
# Four vector fields per collection is Milvus' default limit (proxy.maxVectorFieldNum): two are left for
# cosine galleries after `fused` and `weimocir`.
MAX_COSINE_FIELDS = 2
COSINE_FIELDS = tuple(f"cosine_{i}" for i in range(MAX_COSINE_FIELDS))
# Milvus' largest FLOAT_VECTOR dimension.
MAX_MILVUS_DIM = 32768
# Two gammas closer than this are the same stored gallery (weights arrive as floats from protos and TOML).
_GAMMA_TOLERANCE = 1e-9


@dataclass(frozen=True)
class CosineSpec:
    """One stored cosine gallery: normalize(gamma t_c' + (1 - gamma) t_v)."""

    gamma: float
    renormalized: bool

    def describe(self) -> str:
        return f"gamma {self.gamma:g}" + (" with renormalised caption features" if self.renormalized else "")


def preset_cosine_specs(presets: Iterable[tuple[float, bool]]) -> tuple[CosineSpec, ...]:
    """The distinct (gamma, renormalised) pairs of the presets, in a stable order, at most the fields left."""
    unique = sorted({(float(gamma), bool(renorm)) for gamma, renorm in presets})
    return tuple(CosineSpec(gamma, renorm) for gamma, renorm in unique[:MAX_COSINE_FIELDS])


@dataclass(frozen=True)
class Layout:
    """The vector fields of one collection: embedding dimension d, caption slots R, stored cosine specs."""

    dim: int
    slots: int
    cosine: tuple[CosineSpec, ...]
    instructcir_dim: int = 0  # d_i of the InstructCIR targets; 0: the collection keeps none

    def __post_init__(self) -> None:
        if len(self.cosine) > MAX_COSINE_FIELDS:
            raise ValueError(f"at most {MAX_COSINE_FIELDS} cosine galleries fit a Milvus collection")
        widest = max(3, self.slots + 2) * self.dim
        if max(widest, self.instructcir_dim) > MAX_MILVUS_DIM:
            raise InvalidArgument(
                f"vectors of dimension {self.dim} with {self.slots} caption slots need a Milvus vector field "
                f"of {widest} components; Milvus allows at most {MAX_MILVUS_DIM}"
            )

    def field_dims(self) -> dict[str, int]:
        dims = {FUSED: 3 * self.dim, WEIMOCIR: (self.slots + 2) * self.dim}
        dims.update({COSINE_FIELDS[i]: self.dim for i in range(len(self.cosine))})
        if self.instructcir_dim:
            dims[INSTRUCTCIR] = self.instructcir_dim
        return dims


def gallery_rows(
    layout: Layout,
    t_v: np.ndarray,
    caption_mean: np.ndarray,
    caption_slots: np.ndarray,
    instructcir_target: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every stored vector field for n images: t_v (n, d) normalised, caption_mean (n, d), slots (n, R, d),
    the InstructCIR targets (n, d_i) when the layout keeps them (rows of zeros where a write has none)."""
    t_v = np.asarray(t_v, np.float32)
    t_c = np.asarray(caption_mean, np.float32)
    slots = np.asarray(caption_slots, np.float32)
    n = t_v.shape[0]
    t_c_unit = normalize(t_c)
    slots_unit = normalize(slots) if slots.size else np.zeros((n, 0, layout.dim), np.float32)
    # mean over zero slots would be NaN; an image without captions has no caption term (zeros) instead.
    slot_mean = slots_unit.mean(axis=1) if slots_unit.shape[1] else np.zeros_like(t_v)
    rows = {
        FUSED: np.concatenate([t_c, t_c_unit, t_v], axis=1),
        WEIMOCIR: np.concatenate([slots_unit.reshape(n, -1), t_v, slot_mean], axis=1),
    }
    for field, spec in zip(COSINE_FIELDS, layout.cosine, strict=False):
        caption_part = t_c_unit if spec.renormalized else t_c
        rows[field] = normalize(spec.gamma * caption_part + (1.0 - spec.gamma) * t_v)
    if layout.instructcir_dim:
        if instructcir_target is None:
            rows[INSTRUCTCIR] = np.zeros((n, layout.instructcir_dim), np.float32)
        else:
            rows[INSTRUCTCIR] = normalize(np.asarray(instructcir_target, np.float32))
    return {name: matrix.astype(np.float32, copy=False) for name, matrix in rows.items()}


def expand_query(layout: Layout, spec: GallerySpec, q: np.ndarray) -> tuple[str, np.ndarray]:
    """(vector field, query vector) such that `query . field_row(n)` equals `q . gallery_matrix(spec)[n]`."""
    q = np.asarray(q, np.float32)
    d = layout.dim
    zeros = np.zeros(d, np.float32)
    if spec.kind is GalleryKind.WEIMOCIR_CODED:
        want = (layout.slots + 1) * d
        if q.shape != (want,):
            raise FailedPrecondition(
                f"the coded WeiMoCIR query has {q.shape[-1]} components; this collection's images have "
                f"{layout.slots} caption slots of dimension {d}, so it must have {want}"
            )
        return WEIMOCIR, np.concatenate([q, zeros])
    if spec.kind is GalleryKind.INSTRUCTCIR:
        if not layout.instructcir_dim:
            raise FailedPrecondition("this Milvus collection keeps no InstructCIR target embeddings")
        if q.shape != (layout.instructcir_dim,):
            raise FailedPrecondition(
                f"the InstructCIR query has shape {q.shape}; this collection's targets have dimension "
                f"{layout.instructcir_dim}"
            )
        return INSTRUCTCIR, q
    if q.shape != (d,):
        raise FailedPrecondition(
            f"the query vector has shape {q.shape}; this collection holds vectors of dimension {d}"
        )
    if spec.kind is GalleryKind.IMAGE:
        return FUSED, np.concatenate([zeros, zeros, q])
    if spec.kind is GalleryKind.WEIMOCIR_PAPER:
        b = np.float32(spec.weimocir_b)
        slot_zeros = np.zeros(layout.slots * d, np.float32)
        return WEIMOCIR, np.concatenate([slot_zeros, (1 - b) * q, b * q])
    g = np.float32(spec.gamma)
    if spec.score is ScoreFunction.DOT:
        if spec.caption_features_renormalized:
            return FUSED, np.concatenate([zeros, g * q, (1 - g) * q])
        return FUSED, np.concatenate([g * q, zeros, (1 - g) * q])
    for field, stored in zip(COSINE_FIELDS, layout.cosine, strict=False):
        if stored.renormalized == spec.caption_features_renormalized and _same(stored.gamma, spec.gamma):
            return field, q
    # Two cosine galleries are parts of `fused` already: gamma 0 is t_v (unit rows), gamma 1 is
    # normalize(t_c) (with or without renormalisation, normalising again changes nothing).
    if _same(spec.gamma, 0.0):
        return FUSED, np.concatenate([zeros, zeros, q])
    if _same(spec.gamma, 1.0):
        return FUSED, np.concatenate([zeros, q, zeros])
    wanted = CosineSpec(spec.gamma, spec.caption_features_renormalized).describe()
    stored_text = "; ".join(s.describe() for s in layout.cosine) or "none"
    raise FailedPrecondition(
        f"cosine scoring of CVSI at {wanted} is not stored in this Milvus collection (cosine needs a gallery "
        f"normalised per gamma; stored: {stored_text}, and gamma 0 or 1): use score_function=dot, exact for "
        "any gamma, or a stored gamma (a preset's), or the local store backend"
    )


def _same(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= _GAMMA_TOLERANCE
