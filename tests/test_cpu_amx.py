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

import numpy as np
import pytest
from sdar_fixtures import matmul_runner, tiny_artifact
from sdar_rt import _core

cpu_pack = pytest.importorskip("sdar_export.cpu_pack")
quantize = pytest.importorskip("sdar_export.quantize")

ENV = "SDAR_CPU_AMX"
SWITCH = 32  # kAmxMinRows (runtime/cpu/amx.h)
HAS_AMX = "avx512vnni" in _core.cpu_kernels_available() and _core.cpu_amx_usable()
needs_amx = pytest.mark.skipif(
    not HAS_AMX,
    reason="this CPU, OS or build has no AMX-INT8 (with the avx512vnni kernels): the AMX path is not "
           "tested here")


def _runner(monkeypatch, kernels: str, amx: str | None, threads: int = 2) -> _core.CpuMatmul:
    return matmul_runner(monkeypatch, ENV, amx, kernels, threads)


def _matrix(bits, group, symmetric, N, K, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32) * 0.05
    p = cpu_pack.pack_qtensor(quantize.quantize_rtn(w, bits, group, symmetric, np.float32))
    return _core.CpuMatrix(p.format, p.rows, p.cols, p.data, p.scales, p.zero_scales, p.group, p.symmetric)


def _check_equal(monkeypatch, mat, K, rows, seed, scalar_too=True):
    amx = _runner(monkeypatch, "avx512vnni", None)
    small = _runner(monkeypatch, "avx512vnni", "0")
    assert amx.amx and not small.amx
    scalar = _runner(monkeypatch, "scalar", None, threads=1)
    rng = np.random.default_rng(seed)
    for M in rows:
        x = rng.standard_normal((M, K)).astype(np.float32)
        x[0, :5] *= 40.0  # one large block next to ordinary ones
        y = amx.matmul(mat, x)
        np.testing.assert_array_equal(y, small.matmul(mat, x), err_msg=f"AMX vs avx512vnni no AMX, M={M}")
        if scalar_too:
            np.testing.assert_array_equal(y, scalar.matmul(mat, x), err_msg=f"AMX vs scalar, M={M}")


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
    mat = _matrix(bits, group, symmetric, N, K, seed=N * 7 + K)
    _check_equal(monkeypatch, mat, K, rows, seed=K)


@needs_amx
@pytest.mark.parametrize("bits,symmetric", [(4, True), (8, False)])
def test_amx_lm_head_shape(monkeypatch, bits, symmetric):
    """The LM head's class: thousands of output columns (many strips over the threads), a part strip."""
    N, K = 8197, 512
    mat = _matrix(bits, 128, symmetric, N, K, seed=3)
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
    from sdar_export.cli import export
    from sdar_rt import Generator
    from sdar_rt.artifact import load_artifact
    from sdar_rt.cpu_engine import make_cpu_engine

    ck, _ = tiny_artifact(tmp_path_factory, "float32")
    art = export(ck, tmp_path_factory.mktemp("amx") / "art", quantize="int4", group_size=32, lm_head_bits=4,
                 max_context=128, batch=2, quiet=True)
    a = load_artifact(art)
    rng = np.random.default_rng(11)
    prompts = [[int(t) for t in rng.integers(0, 500, 60)] for _ in range(2)]
    outs = []
    for setting in (None, "0"):
        if setting is None:
            monkeypatch.delenv(ENV, raising=False)
        else:
            monkeypatch.setenv(ENV, setting)
        engine = make_cpu_engine(a, threads=2, kernels="avx512vnni")
        monkeypatch.delenv(ENV, raising=False)
        assert engine.amx == (setting is None)
        gen = Generator(art, engine=engine)
        for fused in (True, False):
            out = gen.generate(prompt_ids=prompts, max_new_tokens=16, fused_commit=fused)
            outs.append([o.token_ids for o in out])
    assert outs[0] == outs[2] and outs[1] == outs[3]
    assert all(outs[0]) and all(outs[1])
