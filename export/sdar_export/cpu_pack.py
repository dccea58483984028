"""Packing of weight matrices into the native CPU engine's layouts (numpy only, no torch).

The layouts are those the kernels in ``runtime/cpu`` read straight from the memory-mapped weight
file (``runtime/cpu/packed_matrix.h``):

* rows (output features) are padded with zeros to a multiple of ``PANEL`` = 8, and the 8 rows of a
  panel are interleaved per chunk of K, so a kernel reading one chunk of all 8 rows reads one
  contiguous run and a whole panel is one contiguous range;
* ``f32``: float32 ``[rows_padded / 8, K, 8 rows]``: k-major panels (the 8 weights of a column of a
  panel together);
* ``q4``: unsigned 4-bit codes ``u`` with ``w = (u - z) * scale``, ``[rows_padded / 8, ceil(K / 64), 8 rows,
  32]`` bytes: byte ``j`` of a row's 64-weight unit holds weight ``j`` in its low nibble and weight
  ``j + 32`` in its high nibble (a load and a mask give the first 32 weights in order, a shift and a
  mask the next 32); K is padded with zero codes to a multiple of 64;
* ``q8``: unsigned 8-bit codes, ``[rows_padded / 8, K / 32, 8 rows, 32]`` bytes;
* scales (and for asymmetric weights ``zero_scales`` = zero point * scale) per 8-row panel and group:
  ``[rows_padded / 8, K / group, 8]`` float32. Symmetric weights have the implicit zero point
  ``2^(bits-1)`` (8 or 128) and no ``zero_scales``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PANEL = 8
CHUNK = 32


@dataclass
class PackedArrays:
    """One matrix in a CPU-engine layout: ``format`` f32 | q4 | q8, shape [rows, cols]."""

    format: str
    rows: int
    cols: int
    data: np.ndarray
    scales: np.ndarray | None = None
    zero_scales: np.ndarray | None = None
    group: int = 0
    symmetric: bool = True

    def arrays(self) -> list[tuple[str, np.ndarray]]:
        out = [("data", self.data)]
        if self.scales is not None:
            out.append(("scales", self.scales))
        if self.zero_scales is not None:
            out.append(("zero_scales", self.zero_scales))
        return out


def padded_rows(n: int) -> int:
    return (n + PANEL - 1) // PANEL * PANEL


def _pad_rows(a: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    if n % PANEL == 0:
        return a
    pad = np.zeros((padded_rows(n) - n, *a.shape[1:]), dtype=a.dtype)
    return np.concatenate([a, pad], axis=0)


def panel_layout(per_row_group: np.ndarray) -> np.ndarray:
    """[N, G] per-row, per-group values -> [N_padded / 8, G, 8] float32."""
    a = _pad_rows(np.asarray(per_row_group, dtype=np.float32))
    n, g = a.shape
    return np.ascontiguousarray(a.reshape(n // PANEL, PANEL, g).transpose(0, 2, 1))


def _interleave(a: np.ndarray, step: int) -> np.ndarray:
    """[N_padded, K] (K a multiple of step) -> [N_padded / 8, K / step, 8, step]: panels, chunk-major."""
    n, k = a.shape
    return np.ascontiguousarray(a.reshape(n // PANEL, PANEL, k // step, step).transpose(0, 2, 1, 3))


def _deinterleave(a: np.ndarray, rows: int) -> np.ndarray:
    """Inverse of _interleave, [rows, K] (tests)."""
    p, c, _, step = a.shape
    return a.transpose(0, 2, 1, 3).reshape(p * PANEL, c * step)[:rows]


def pack_f32(w: np.ndarray) -> PackedArrays:
    """A float weight [N, K] (any float dtype; stored as float32)."""
    w = np.asarray(w, dtype=np.float32)
    rows, k = w.shape
    padded = _pad_rows(w)
    data = np.ascontiguousarray(padded.reshape(-1, PANEL, k).transpose(0, 2, 1))
    return PackedArrays("f32", rows, k, data)


def pack_q4_codes(u: np.ndarray) -> np.ndarray:
    """Unsigned 4-bit codes [N, K] (K a multiple of 32) -> [N_padded / 8, ceil(K / 64), 8, 32] bytes."""
    u = _pad_rows(np.asarray(u, dtype=np.uint8))
    n, k = u.shape
    k64 = -(-k // (2 * CHUNK)) * 2 * CHUNK
    u = np.concatenate([u, np.zeros((n, k64 - k), np.uint8)], axis=1) if k64 != k else u
    c = u.reshape(n, k64 // (2 * CHUNK), 2, CHUNK)
    return _interleave((c[:, :, 0, :] | (c[:, :, 1, :] << 4)).reshape(n, k64 // 2), CHUNK)


def pack_codes(u: np.ndarray, bits: int, scale: np.ndarray, zero_point: np.ndarray | None,
               group: int) -> PackedArrays:
    """Unsigned codes ``u`` [N, K] with ``w = (u - z) * scale``; ``scale`` and ``zero_point`` [N, K / group].

    ``zero_point`` None: symmetric (the implicit ``2^(bits-1)``).
    """
    u = np.asarray(u)
    n, k = u.shape
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if group % CHUNK or k % group:
        raise ValueError(f"group {group} must be a multiple of {CHUNK} dividing K = {k}")
    scale = np.asarray(scale, dtype=np.float32)
    data = pack_q4_codes(u) if bits == 4 else _interleave(_pad_rows(u.astype(np.uint8)), CHUNK)
    zs = None
    if zero_point is not None:
        zs = panel_layout(np.asarray(zero_point, dtype=np.float32) * scale)
    return PackedArrays(f"q{bits}", n, k, data, panel_layout(scale), zs, group, zero_point is None)


def pack_qtensor(qt) -> PackedArrays:
    """An exporter ``QTensor`` (sdar_export.quantize): signed codes (symmetric) or codes + zero points."""
    bits = qt.bits
    if qt.zp is None:
        u = (qt.q.astype(np.int16) + 2 ** (bits - 1)).astype(np.uint8)
        return pack_codes(u, bits, qt.scale, None, qt.block)
    return pack_codes(qt.q.astype(np.uint8), bits, qt.scale, qt.zp, qt.block)


def dequantize(p: PackedArrays) -> np.ndarray:
    """The float32 [N, K] weights a packed matrix holds (tests)."""
    n, k = p.rows, p.cols
    if p.format == "f32":
        return p.data.transpose(0, 2, 1).reshape(-1, k)[:n].copy()
    if p.format == "q4":
        c = _deinterleave(p.data, n).reshape(n, -1, CHUNK)
        u = np.concatenate([c & 0x0F, c >> 4], axis=2).reshape(n, -1)[:, :k].astype(np.float32)
    else:
        u = _deinterleave(p.data, n).astype(np.float32)
    g = k // p.group
    scale = p.scales.transpose(0, 2, 1).reshape(-1, g)[:n]
    zs = (np.float32(8 if p.format == "q4" else 128) * scale if p.symmetric
          else p.zero_scales.transpose(0, 2, 1).reshape(-1, g)[:n])
    us = u.reshape(n, g, p.group)
    return (us * scale[:, :, None] - zs[:, :, None]).reshape(n, k)
