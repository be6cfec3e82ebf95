"""An uploaded dataset's arrays as bytes and back, and the hash that names them: shared by the
server (which validates and stores them) and workers (which download and cache them).
numpy only."""

from __future__ import annotations

import hashlib
import io

import numpy as np


def content_hash(X: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the arrays' dtypes, shapes and values (not of a file, whose bytes vary)."""
    digest = hashlib.sha256()
    for array in (X, y):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def to_npz(X: np.ndarray, y: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, X=X, y=y)
    return buffer.getvalue()


def from_npz(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """X and y from NPZ bytes; never unpickles (object arrays are refused)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        X, y = npz["X"], npz["y"]
    for name, array in (("X", X), ("y", y)):
        if not isinstance(array, np.ndarray):  # np.load gives a member that is no .npy as bytes
            raise ValueError(f"{name}.npy is not a numpy array file")
    return X, y
