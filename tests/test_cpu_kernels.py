"""The native CPU engine's matmul kernels, through the bindings, on matrices packed by the exporter.

Reference: the exporter's dequantized weights (``QTensor.dequantize``) in a float64 matmul.
Tolerances:
  * float activations (f32 weights, or quantized weights with activations="float"): 2e-6 of
    sum|w*x| per output (float32 accumulation over at most 1536 products, ~1e-7 relative each);
  * int8 activations: every activation is rounded to a multiple of its block's scale
    s = max|x| / 127 (block = the weight group, at most 128), an error of at most s / 2, so
    |y - y_ref| <= sum over blocks of s_b / 2 * sum_b |w| (+ the float slack). The bound is exact
    arithmetic, not a measured margin: a wrong code, scale, zero point or row is far outside it.
  * the quantized results of every kernel table this CPU runs are equal bit for bit (same integer
    sums, same fused float steps).
"""

from __future__ import annotations

import platform

import numpy as np
import pytest
from sdar_rt import _core

cpu_pack = pytest.importorskip("sdar_export.cpu_pack")
quantize = pytest.importorskip("sdar_export.quantize")

KERNELS = _core.cpu_kernels_available()
# Every x86 table on an x86 machine: the ones this CPU cannot run are reported as skipped (with the
# reason), never silently left out of the equality test.
X86_TABLES = ("avx512vnni", "avxvnni", "avx2")
TABLES = KERNELS + [
    pytest.param(name, marks=pytest.mark.skip(reason=f"this CPU (or build) has no {name}: not tested here"))
    for name in X86_TABLES if platform.machine().lower() in ("x86_64", "amd64") and name not in KERNELS]


def _matrix(p) -> _core.CpuMatrix:
    return _core.CpuMatrix(p.format, p.rows, p.cols, p.data, p.scales, p.zero_scales, p.group, p.symmetric)


def _bound(w: np.ndarray, x: np.ndarray, block: int | None) -> np.ndarray:
    """Per-output tolerance [M, N] (see the module docstring)."""
    tol = 2e-6 * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64))
    if block:
        M, K = x.shape
        amax = np.abs(x).reshape(M, K // block, block).max(-1) / 127.0 / 2.0     # [M, nb]
        wsum = np.abs(w).reshape(w.shape[0], K // block, block).sum(-1)          # [N, nb]
        tol += 1.0001 * (amax.astype(np.float64) @ wsum.T.astype(np.float64))
    return tol + 1e-30


def _case(bits, group, symmetric, N, K, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32) * 0.05
    qt = quantize.quantize_rtn(w, bits, group, symmetric, np.float32)
    return qt, cpu_pack.pack_qtensor(qt)


@pytest.mark.parametrize("bits,group,symmetric,N,K", [
    (4, 32, True, 37, 96), (4, 64, False, 24, 192), (4, 128, True, 17, 384), (4, 128, False, 8, 256),
    (4, 256, True, 9, 512), (8, 32, True, 13, 64), (8, 128, False, 16, 256),
])
@pytest.mark.parametrize("kernels", TABLES)
def test_quantized_matmul_every_row_count(bits, group, symmetric, N, K, kernels):
    qt, packed = _case(bits, group, symmetric, N, K)
    w = qt.dequantize()
    # u * s - z * s (the kernels' form) vs (u - z) * s: a few float32 ulps of 255 * s apart
    np.testing.assert_allclose(cpu_pack.dequantize(packed), w, rtol=0, atol=1e-6 * np.abs(w).max())
    mat = _matrix(packed)
    runner = _core.CpuMatmul(threads=2, kernels=kernels)
    scalar = _core.CpuMatmul(threads=1, kernels="scalar")
    rng = np.random.default_rng(1)
    block = min(group, 128)
    for M in range(1, 17):
        x = rng.standard_normal((M, K)).astype(np.float32)
        x[0, :5] *= 40.0                       # one large block next to ordinary ones
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        y = runner.matmul(mat, x)
        assert y.shape == (M, N)
        err = np.abs(y - ref)
        assert (err <= _bound(w, x, block)).all(), f"M={M}: max err {err.max():.3g}"
        np.testing.assert_array_equal(y, scalar.matmul(mat, x), err_msg=f"{kernels} vs scalar, M={M}")
        yf = runner.matmul(mat, x, activations="float")
        assert (np.abs(yf - ref) <= _bound(w, x, None)).all(), f"float activations, M={M}"


@pytest.mark.parametrize("kernels", KERNELS)
def test_f32_matmul_odd_shapes(kernels):
    rng = np.random.default_rng(2)
    runner = _core.CpuMatmul(threads=2, kernels=kernels)
    for N, K in ((37, 100), (8, 64), (1, 7), (130, 33)):
        w = rng.standard_normal((N, K)).astype(np.float32)
        mat = _matrix(cpu_pack.pack_f32(w))
        for M in (1, 2, 3, 4, 5, 8, 9, 12, 16):
            x = rng.standard_normal((M, K)).astype(np.float32)
            y = runner.matmul(mat, x)
            ref = x.astype(np.float64) @ w.T.astype(np.float64)
            assert (np.abs(y - ref) <= _bound(w, x, None)).all(), (N, K, M)


def test_int8_activation_rounding_is_what_the_bound_allows():
    """The bound is not vacuous: int8 activations do differ from float ones, by less than it."""
    qt, packed = _case(4, 128, True, 64, 512, seed=3)
    w = qt.dequantize()
    runner = _core.CpuMatmul(threads=1)
    x = np.random.default_rng(4).standard_normal((4, 512)).astype(np.float32)
    mat = _matrix(packed)
    y8, yf = runner.matmul(mat, x), runner.matmul(mat, x, activations="float")
    diff = np.abs(y8 - yf)
    assert diff.max() > 1e-4
    assert (diff <= _bound(w, x, 128)).all()


def test_packing_layout():
    """Panels of 8 rows interleaved per unit of 32 bytes; byte j of a row's 64-weight unit: weight j in
    the low nibble, weight j + 32 in the high nibble; K padded to whole units."""
    u = np.zeros((2, 96), dtype=np.uint8)
    u[0, :32] = np.arange(32) % 16
    u[0, 32:64] = 3
    u[1, 64:] = 5
    data = cpu_pack.pack_q4_codes(u)
    assert data.shape == (1, 2, 8, 32)               # [panels, units, 8 rows, 32 bytes]
    assert list(data[0, 0, 0, :3]) == [0 | (3 << 4), 1 | (3 << 4), 2 | (3 << 4)]
    assert (data[0, 1, 1] == 0x05).all() and not data[0, 0, 1].any() and not data[0, :, 2:].any()
    f = cpu_pack.pack_f32(np.arange(20, dtype=np.float32).reshape(2, 10))
    assert f.data.shape == (1, 10, 8)                 # [panels, K, 8 rows]: k-major
    assert f.data[0, 9, 0] == 9.0 and f.data[0, 8, 1] == 18.0 and not f.data[0, :, 2:].any()
    np.testing.assert_array_equal(cpu_pack.dequantize(f), np.arange(20, dtype=np.float32).reshape(2, 10))
    scale = np.arange(2, dtype=np.float32).reshape(1, 2)      # [N=1, G=2]
    lay = cpu_pack.panel_layout(scale)
    assert lay.shape == (1, 2, 8) and lay[0, 1, 0] == 1.0 and not lay[0, :, 1:].any()


def test_bad_matrices_and_inputs_are_refused():
    qt, packed = _case(4, 32, True, 8, 64)
    with pytest.raises(ValueError, match="data has .* bytes"):
        _core.CpuMatrix("q4", 8, 64, packed.data.reshape(-1)[:100], packed.scales, None, 32, True)
    with pytest.raises(ValueError, match="needs scales"):
        _core.CpuMatrix("q4", 8, 64, packed.data, None, None, 32, True)
    with pytest.raises(ValueError, match="group size 48"):
        _core.CpuMatrix("q4", 8, 96, np.zeros((1, 3, 8, 16), np.uint8), np.zeros((1, 2, 8), np.float32), None,
                        48, True)
    with pytest.raises(ValueError, match="needs zero_scales"):
        _core.CpuMatrix("q4", 8, 64, packed.data, packed.scales, None, 32, False)
    with pytest.raises(ValueError, match="weight format"):
        _core.CpuMatrix("q3", 8, 64, packed.data, packed.scales, None, 32, True)
    mat = _matrix(packed)
    runner = _core.CpuMatmul()
    with pytest.raises(ValueError, match="columns"):
        runner.matmul(mat, np.zeros((2, 65), np.float32))
    with pytest.raises(ValueError, match="activations"):
        runner.matmul(mat, np.zeros((2, 64), np.float32), activations="int4")
    with pytest.raises(ValueError, match="unknown CPU kernels"):
        _core.CpuMatmul(kernels="sse9")
    other = "neon" if "neon" not in KERNELS else "avx2"
    if other not in KERNELS:
        with pytest.raises(ValueError, match="cannot run here"):
            _core.CpuMatmul(kernels=other)
