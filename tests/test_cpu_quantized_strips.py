"""The CPU engine's strips kernel: int4 / int8 matmuls of many rows (a prompt's prefill) on the x86
tables, where the weights of a strip of panels are unpacked once per call into the layout of the
integer dot instruction and serve every tile of rows (runtime/cpu/quantized_strips.inl). The AVX2
table takes it for 4-bit codes only (8-bit ones keep its small-M kernel).

The integer sums per activation block are exact in any order and the float steps per block are
every table's (runtime/cpu/kernels.h), so the strips kernel must give the same bits as the same
table's small-M kernels (``SDAR_CPU_GEMM_MIN_ROWS=0``) and as the scalar table on every row and
column: Q4 and Q8, symmetric and not, activation blocks of 32, 64 and 128, row counts around the
switch-over (32) and up to 512 (every remainder of the kernel's tiles of rows), N with partial
strips and a part panel, K over several blocks and an odd number of chunks, and the LM head's
shape class. A whole prefill through the engine gives the same tokens with the strips kernel and
without it. The AMX path is turned off here (``SDAR_CPU_AMX=0``): with it, it takes these matmuls.

The Arm and scalar tables have no strips kernel; on a CPU without the x86 tables every test here is
skipped with that reason.
"""

from __future__ import annotations

import pytest
from sdar_fixtures import (
    assert_prefill_tokens_unchanged,
    assert_same_bits,
    matmul_runner,
    quantized_matrix,
    tiny_int4_artifact,
)
from sdar_rt import _core

ENV = "SDAR_CPU_GEMM_MIN_ROWS"
SWITCH = 32  # kGemmDefaultMinRows (runtime/cpu/gemm.h)
STRIP_TABLES = [k for k in ("avx512vnni", "avxvnni", "avx2") if k in _core.cpu_kernels_available()]
needs_strips = pytest.mark.skipif(not STRIP_TABLES, reason="this CPU or build has no x86 kernel table: the "
                                  "strips kernel is not run here")


def _runner(monkeypatch, kernels: str, min_rows: str | None, threads: int = 2) -> _core.CpuMatmul:
    monkeypatch.setenv("SDAR_CPU_AMX", "0")  # AMX would take these matmuls where the CPU has it
    return matmul_runner(monkeypatch, ENV, min_rows, kernels, threads)


def _check_equal(monkeypatch, kernels, mat, K, rows, seed):
    strips = _runner(monkeypatch, kernels, None)
    small = _runner(monkeypatch, kernels, "0")
    scalar = _runner(monkeypatch, "scalar", None, threads=1)
    assert strips.quantized_strips and not small.quantized_strips and not strips.amx
    assert not scalar.quantized_strips
    runners = {f"{kernels} strips": strips, f"{kernels} small-M": small, "scalar": scalar}
    assert_same_bits(runners, mat, K, rows, seed)


@needs_strips
@pytest.mark.parametrize("kernels", STRIP_TABLES)
@pytest.mark.parametrize("bits,group,symmetric,N,K,rows", [
    (4, 32, True, 37, 96, (SWITCH - 1, SWITCH, SWITCH + 1)),   # 3 chunks of 32: half a Q4 unit
    (4, 32, False, 85, 256, (47, 64)),                          # a part panel; a last strip of 3 panels
    (4, 64, True, 40, 320, (SWITCH + 16, 100)),                 # a last strip of 1 panel
    (4, 128, True, 70, 512, (SWITCH + 3, 512)),
    (4, 256, False, 16, 768, (SWITCH + 4, 130)),                # blocks of 128 in groups of 256
    (8, 32, True, 45, 160, (SWITCH, 61)),                       # 5 chunks
    (8, 64, False, 64, 256, (SWITCH + 5, 59)),
    (8, 128, True, 30, 384, (100, 512)),
])
def test_strips_equal_the_kernel_tables(monkeypatch, kernels, bits, group, symmetric, N, K, rows):
    mat = quantized_matrix(bits, group, symmetric, N, K, seed=N * 7 + K)
    _check_equal(monkeypatch, kernels, mat, K, rows, seed=K)


@needs_strips
@pytest.mark.parametrize("bits,symmetric", [(4, True), (8, False)])
def test_strips_lm_head_shape(monkeypatch, bits, symmetric):
    """N in the thousands (an LM head's class of shape): many strips per task."""
    mat = quantized_matrix(bits, 128, symmetric, 3001, 256, seed=bits)
    _check_equal(monkeypatch, STRIP_TABLES[0], mat, 256, (SWITCH + 2,), seed=3)


def test_tables_without_strips_say_so(monkeypatch):
    for kernels in _core.cpu_kernels_available():
        runner = _runner(monkeypatch, kernels, None, threads=1)
        assert runner.quantized_strips == (kernels in ("avx512vnni", "avxvnni", "avx2")), kernels


@needs_strips
def test_prefill_tokens_are_the_same_with_and_without_the_strips(tmp_path_factory, monkeypatch):
    """A 2 x 60-token prompt prefills 120 rows per matmul of a tiny int4 artifact (4-bit head): every
    generated token equal with the strips kernel and with the small-M kernels."""
    from sdar_rt.artifact import load_artifact
    from sdar_rt.cpu_engine import make_cpu_engine

    art = tiny_int4_artifact(tmp_path_factory)
    a = load_artifact(art)
    monkeypatch.setenv("SDAR_CPU_AMX", "0")
    assert_prefill_tokens_unchanged(monkeypatch, ENV, art,
                                    lambda setting: make_cpu_engine(a, threads=2, kernels=STRIP_TABLES[-1]))
