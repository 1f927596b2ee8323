"""Byte-level inputs: UTF-8 bytes drive a reservoir through a one-hot input layer.

A one-hot input times W_in just selects a column of W_in, so the projection of a byte
string is a row gather from W_inᵀ (O(T·N)), never a (T×256)·(256×N) product.
"""

from __future__ import annotations

import numpy as np

__all__ = ["byte_codes", "one_hot", "project_bytes"]

VOCAB = 256


def byte_codes(data: str | bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Byte values as a uint8 array of shape (T,); str is encoded as UTF-8."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if isinstance(data, bytes | bytearray | memoryview):
        return np.frombuffer(bytes(data), dtype=np.uint8)
    codes = np.asarray(data)
    if codes.ndim != 1 or codes.dtype != np.uint8:
        raise ValueError(f"byte data must be 1-D uint8, got {codes.dtype} of shape {codes.shape}")
    return codes


def one_hot(data: str | bytes | np.ndarray, dtype: str = "float64") -> np.ndarray:
    """One-hot rows of shape (T, 256) — for readouts or checks; the reservoir never needs it."""
    codes = byte_codes(data)
    out = np.zeros((codes.size, VOCAB), dtype=dtype)
    out[np.arange(codes.size), codes] = 1.0
    return out


def project_bytes(
    data: str | bytes | np.ndarray,
    W_in: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    dtype: str = "float64",
) -> np.ndarray:
    """W_in·onehot(byte) + b for every byte: shape (T, N), by column lookup in W_in (N, 256).

    The result can be passed (as (1, T, N)) to ``Reservoir.run_projected``.
    """
    if W_in.ndim != 2 or W_in.shape[1] != VOCAB:
        raise ValueError(f"W_in must have shape (N, {VOCAB}), got {W_in.shape}")
    table = np.ascontiguousarray(W_in.T, dtype=dtype)  # rows are the columns of W_in
    out = table[byte_codes(data)]
    if bias is not None and np.any(bias):
        out += np.asarray(bias, dtype=dtype)
    return out
