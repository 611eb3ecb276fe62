"""Packed float32 vectors: the one encoding shared by the cache and the proto `Vector.packed_f32le` field.

Vectors travel and rest as little-endian IEEE-754 float32 so that a value written on one host reads the
same on any other, whatever its native byte order.
"""

from __future__ import annotations

import struct

import numpy as np

from cir.common.v1 import common_pb2
from cir_common.errors import InvalidArgument

_F32LE = np.dtype("<f4")
# Matrix header: magic, rows, cols. The magic stops a 1-D payload (or garbage) from being read as a matrix.
_MATRIX_MAGIC = b"F32M"
_MATRIX_HEADER = struct.Struct("<4sII")


def pack_f32(vec: np.ndarray) -> bytes:
    """A 1-D vector as little-endian float32 bytes (4 * dim bytes)."""
    arr = np.asarray(vec)
    if arr.ndim != 1:
        raise ValueError(f"pack_f32 takes a 1-D vector, got shape {arr.shape}")
    return arr.astype(_F32LE, copy=False).tobytes()


def unpack_f32(data: bytes, dim: int | None = None, *, label: str = "vector") -> np.ndarray:
    """The float32 vector packed in `data`; raises InvalidArgument when the length does not fit `dim`."""
    if len(data) % 4:
        raise InvalidArgument(
            f"{label}: packed float32 data is {len(data)} bytes, not a multiple of 4; "
            "send 4 bytes (little-endian float32) per component"
        )
    n = len(data) // 4
    if dim is not None and n != dim:
        raise InvalidArgument(
            f"{label}: packed float32 data holds {n} components ({len(data)} bytes) but dim is {dim}; "
            f"send exactly {4 * dim} bytes"
        )
    # Copy: frombuffer over `bytes` is read-only, and callers normalise vectors in place.
    return np.frombuffer(data, dtype=_F32LE).astype(np.float32)


def pack_f32_matrix(mat: np.ndarray) -> bytes:
    """An (n, d) matrix as a 12-byte header (magic, n, d) followed by n * d little-endian float32."""
    arr = np.asarray(mat)
    if arr.ndim != 2:
        raise ValueError(f"pack_f32_matrix takes an (n, d) matrix, got shape {arr.shape}")
    rows, cols = arr.shape
    return _MATRIX_HEADER.pack(_MATRIX_MAGIC, rows, cols) + np.ascontiguousarray(arr, dtype=_F32LE).tobytes()


def unpack_f32_matrix(data: bytes, dim: int | None = None, *, label: str = "matrix") -> np.ndarray:
    """The (n, d) float32 matrix packed by `pack_f32_matrix`; checks the header, length and `dim` (= d)."""
    if len(data) < _MATRIX_HEADER.size:
        raise InvalidArgument(f"{label}: packed matrix is {len(data)} bytes, shorter than its 12-byte header")
    magic, rows, cols = _MATRIX_HEADER.unpack_from(data)
    if magic != _MATRIX_MAGIC:
        raise InvalidArgument(f"{label}: not a packed float32 matrix (header starts {magic!r})")
    expected = _MATRIX_HEADER.size + 4 * rows * cols
    if len(data) != expected:
        raise InvalidArgument(
            f"{label}: packed matrix header says {rows}x{cols} ({expected} bytes) but the data is "
            f"{len(data)} bytes"
        )
    if dim is not None and cols != dim:
        raise InvalidArgument(f"{label}: packed matrix has {cols} columns, expected {dim}")
    flat = np.frombuffer(data, dtype=_F32LE, offset=_MATRIX_HEADER.size)
    return flat.astype(np.float32).reshape(rows, cols)


def vector_to_proto(vec: np.ndarray, fmt: int = common_pb2.VECTOR_FORMAT_UNSPECIFIED) -> common_pb2.Vector:
    """A `cir.common.v1.Vector` holding `vec` in the requested `VectorFormat` (UNSPECIFIED = FLOATS)."""
    arr = np.asarray(vec, dtype=np.float32)
    if arr.ndim != 1:
        raise ValueError(f"vector_to_proto takes a 1-D vector, got shape {arr.shape}")
    if fmt == common_pb2.VECTOR_FORMAT_PACKED_F32:
        return common_pb2.Vector(packed_f32le=pack_f32(arr), dim=arr.shape[0])
    if fmt in (common_pb2.VECTOR_FORMAT_UNSPECIFIED, common_pb2.VECTOR_FORMAT_FLOATS):
        return common_pb2.Vector(values=arr.tolist(), dim=arr.shape[0])
    raise InvalidArgument(
        f"unknown vector format {fmt}; use VECTOR_FORMAT_FLOATS or VECTOR_FORMAT_PACKED_F32"
    )


def vector_from_proto(
    msg: common_pb2.Vector, *, expected_dim: int | None = None, label: str = "vector"
) -> np.ndarray:
    """The float32 array in a `Vector` message, from `values` or `packed_f32le`.

    `dim` is checked when the sender set it (proto3 cannot tell an unset 0 from a zero-length vector, and a
    zero-length vector is never valid, so 0 means "not stated"). `expected_dim` is what the caller needs.
    """
    has_values = len(msg.values) > 0
    has_packed = len(msg.packed_f32le) > 0
    if has_values and has_packed:
        raise InvalidArgument(f"{label}: both values and packed_f32le are set; set exactly one")
    if not has_values and not has_packed:
        raise InvalidArgument(f"{label}: is empty; set values or packed_f32le")
    stated = msg.dim or None
    if has_packed:
        arr = unpack_f32(msg.packed_f32le, stated, label=label)
    else:
        arr = np.asarray(msg.values, dtype=np.float32)
        if stated is not None and arr.shape[0] != stated:
            raise InvalidArgument(f"{label}: has {arr.shape[0]} values but dim is {stated}")
    if expected_dim is not None and arr.shape[0] != expected_dim:
        raise InvalidArgument(
            f"{label}: has {arr.shape[0]} components but this model's vectors have {expected_dim}"
        )
    if not np.all(np.isfinite(arr)):
        raise InvalidArgument(f"{label}: contains NaN or infinite components")
    return arr
