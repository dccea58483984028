"""The CPU engine's GEMM path: float32 matmuls of many rows (a prompt's prefill) as a blocked GEMM.

In the GEMM, in the scalar table and in the vector tables' tiles of 4 rows, each output is one chain
of fused multiply-adds over k in order, from zero. So:
  * the GEMM's result equals the small-M kernels' (``SDAR_CPU_GEMM_MIN_ROWS=0``) bit for bit on the
    rows those run in tiles of 4 (every row when M % 4 is 0 or 3; the last 1 or 2 rows otherwise run
    in narrower tiles, which split their chains), and the scalar table's on every row;
  * it is within 2e-6 * sum|w x| of a float64 reference (float32 accumulation);
  * a whole prefill through the engine gives the same tokens with the GEMM and without it.
Row counts around the switch-over and 512, odd N and K (K over several of the GEMM's blocks).
"""

from __future__ import annotations

import numpy as np
import pytest
from sdar_fixtures import assert_prefill_tokens_unchanged, matmul_runner, tiny_artifact
from sdar_rt import _core

cpu_pack = pytest.importorskip("sdar_export.cpu_pack")

KERNELS = _core.cpu_kernels_available()
ENV = "SDAR_CPU_GEMM_MIN_ROWS"
SWITCH = 32  # the default row count from which float32 matmuls take the GEMM (gemm.h)


def _runner(monkeypatch, kernels: str, min_rows: str | None, threads: int = 2) -> _core.CpuMatmul:
    return matmul_runner(monkeypatch, ENV, min_rows, kernels, threads)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("N,K,rows", [
    (37, 100, (SWITCH - 1, SWITCH, SWITCH + 1, SWITCH + 2, 61)),
    (45, 525, (SWITCH, SWITCH + 3, 64)),
    (130, 33, (40,)),
    (24, 300, (512,)),
    # 32-column strips (the AVX-512 microkernel's): two whole, one of 3 panels; tiles of 12 rows, partial.
    (85, 3 * 256 + 7, (SWITCH + 7, 100)),
    (59, 512, (512,)),
])
def test_gemm_equals_the_small_m_kernels(monkeypatch, kernels, N, K, rows):
    rng = np.random.default_rng(N * 1000 + K)
    w = rng.standard_normal((N, K)).astype(np.float32)
    mat = _core.CpuMatrix("f32", N, K, cpu_pack.pack_f32(w).data)
    gemm = _runner(monkeypatch, kernels, None)
    small = _runner(monkeypatch, kernels, "0")
    scalar = _runner(monkeypatch, "scalar", "0", threads=1)
    for M in rows:
        x = rng.standard_normal((M, K)).astype(np.float32)
        y = gemm.matmul(mat, x)
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        bound = 2e-6 * (np.abs(x).astype(np.float64) @ np.abs(w).T.astype(np.float64)) + 1e-30
        assert (np.abs(y - ref) <= bound).all(), f"M={M}: max err {np.abs(y - ref).max():.3g}"
        tiled = M if M % 4 == 3 else M // 4 * 4
        np.testing.assert_array_equal(y[:tiled], small.matmul(mat, x)[:tiled], err_msg=f"vs small-M, M={M}")
        np.testing.assert_array_equal(y, scalar.matmul(mat, x), err_msg=f"vs scalar, M={M}")


def test_below_the_switch_over_nothing_changes(monkeypatch):
    """Under SWITCH rows both runners take the small-M kernels: equal on every row, narrow tiles included."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((40, 72)).astype(np.float32)
    mat = _core.CpuMatrix("f32", 40, 72, cpu_pack.pack_f32(w).data)
    gemm, small = _runner(monkeypatch, "auto", None), _runner(monkeypatch, "auto", "0")
    for M in (1, 2, 5, SWITCH - 1):
        x = rng.standard_normal((M, 72)).astype(np.float32)
        np.testing.assert_array_equal(gemm.matmul(mat, x), small.matmul(mat, x))


@pytest.mark.parametrize("value", ["many", "-3", "8rows"])
def test_bad_min_rows_setting_is_refused(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        _core.CpuMatmul(threads=1)


def test_prefill_tokens_are_the_same_with_and_without_the_gemm(tmp_path_factory, monkeypatch):
    """A 2 x 60-token prompt prefills 120 rows per matmul (the GEMM path); every token equal."""
    from sdar_rt import Generator
    from sdar_rt.cpu_engine import make_cpu_engine

    _, art = tiny_artifact(tmp_path_factory, "float32", batch=2)
    a = Generator(art, engine="ort").artifact
    assert_prefill_tokens_unchanged(monkeypatch, ENV, art, lambda setting: make_cpu_engine(a, threads=2))
