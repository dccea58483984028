"""The CPU engine's AMX path: int4 / int8 matmuls of many rows (a prompt's prefill) on AMX-INT8 tiles.

The integer sums per activation block are exact in any order and the float steps per block are the
kernel tables' own (runtime/cpu/kernels.h), so the AMX path must give the same bits as the
avx512vnni table's other path (``SDAR_CPU_AMX=0``: its strips kernel, itself tested against the
small-M kernels in test_cpu_quantized_strips.py) and as the scalar table on every row and
column: Q4 and Q8, symmetric and not, activation blocks of 32, 64 and 128, row counts around the
switch-over (32) and up to 512 (not multiples of 16 or 32 too), N with a partial last strip of 32
columns, K over several blocks, and the LM head's shape class (N in the thousands). A whole prefill
through the engine gives the same tokens with AMX and without it.

On a CPU (or OS, or build) without AMX-INT8 every test here is skipped with that reason.
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

ENV = "SDAR_CPU_AMX"
SWITCH = 32  # kAmxMinRows (runtime/cpu/amx.h)
HAS_AMX = "avx512vnni" in _core.cpu_kernels_available() and _core.cpu_amx_usable()
needs_amx = pytest.mark.skipif(
    not HAS_AMX,
    reason="this CPU, OS or build has no AMX-INT8 (with the avx512vnni kernels): the AMX path is not "
           "tested here")


def _runner(monkeypatch, kernels: str, amx: str | None, threads: int = 2) -> _core.CpuMatmul:
    return matmul_runner(monkeypatch, ENV, amx, kernels, threads)


def _check_equal(monkeypatch, mat, K, rows, seed, scalar_too=True):
    amx = _runner(monkeypatch, "avx512vnni", None)
    no_amx = _runner(monkeypatch, "avx512vnni", "0")
    assert amx.amx and not no_amx.amx
    runners = {"AMX": amx, "avx512vnni no AMX": no_amx}
    if scalar_too:
        runners["scalar"] = _runner(monkeypatch, "scalar", None, threads=1)
    assert_same_bits(runners, mat, K, rows, seed)


@needs_amx
@pytest.mark.parametrize("bits,group,symmetric,N,K,rows", [
    (4, 32, True, 37, 96, (SWITCH - 1, SWITCH, SWITCH + 1)),   # 3 chunks of 32: half a Q4 unit
    (4, 32, False, 85, 256, (47, 64)),                          # last strip: 3 panels, the last one part
    (4, 64, True, 40, 320, (SWITCH + 16, 100)),                 # last strip: 1 panel
    (4, 64, False, 24, 192, (16 * 3 + 5,)),
    (4, 128, True, 70, 512, (SWITCH, 512)),
    (4, 128, False, 33, 1024, (77,)),
    (4, 256, False, 16, 768, (SWITCH + 1, 130)),                # blocks of 128 in groups of 256
    (8, 32, True, 45, 160, (SWITCH, 61)),                       # 5 chunks
    (8, 64, False, 64, 256, (SWITCH + 3,)),
    (8, 128, True, 30, 384, (100, 512)),
    (8, 128, False, 50, 256, (SWITCH, 40)),
])
def test_amx_equals_the_kernel_tables(monkeypatch, bits, group, symmetric, N, K, rows):
    mat = quantized_matrix(bits, group, symmetric, N, K, seed=N * 7 + K)
    _check_equal(monkeypatch, mat, K, rows, seed=K)


@needs_amx
@pytest.mark.parametrize("bits,symmetric", [(4, True), (8, False)])
def test_amx_lm_head_shape(monkeypatch, bits, symmetric):
    """The LM head's class: thousands of output columns (many strips over the threads), a part strip."""
    N, K = 8197, 512
    mat = quantized_matrix(bits, 128, symmetric, N, K, seed=3)
    _check_equal(monkeypatch, mat, K, (SWITCH, 72), seed=4)


@needs_amx
def test_amx_setting(monkeypatch):
    assert _runner(monkeypatch, "auto", None).amx
    assert not _runner(monkeypatch, "avx512vnni", "0").amx
    assert _runner(monkeypatch, "avx512vnni", "1").amx
    for other in ("avx2", "scalar"):
        if other in _core.cpu_kernels_available():
            assert not _runner(monkeypatch, other, None).amx, f"the {other} table never takes AMX"


@pytest.mark.parametrize("value", ["off", "2", "yes"])
def test_bad_amx_setting_is_refused(monkeypatch, value):
    monkeypatch.setenv(ENV, value)
    with pytest.raises(ValueError, match=ENV):
        _core.CpuMatmul(threads=1)


@needs_amx
def test_prefill_tokens_are_the_same_with_and_without_amx(tmp_path_factory, monkeypatch):
    """A 2 x 60-token prompt prefills 120 rows per matmul of a tiny int4 artifact (4-bit head): every
    generated token equal with AMX and without it."""
    from sdar_rt.artifact import load_artifact
    from sdar_rt.cpu_engine import make_cpu_engine

    art = tiny_int4_artifact(tmp_path_factory)
    a = load_artifact(art)

    def engine(setting):
        e = make_cpu_engine(a, threads=2, kernels="avx512vnni")
        assert e.amx == (setting is None)
        return e

    assert_prefill_tokens_unchanged(monkeypatch, ENV, art, engine)
