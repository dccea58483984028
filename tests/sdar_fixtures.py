"""Session-wide tiny exported artifact for the end-to-end and API tests (skips without torch)."""

from __future__ import annotations

from pathlib import Path

import pytest

_CACHE: dict[str, Path] = {}


def tiny_artifact(tmp_path_factory, dtype: str = "float32", *, block_length: int = 4, batch: int = 1,
                  moe: bool = False) -> tuple[Path, Path]:
    """(checkpoint_dir, artifact_dir) of a random tiny SDAR checkpoint exported with sdar-export."""
    pytest.importorskip("torch")
    pytest.importorskip("sdar_export.cli")
    key = f"{dtype}-L{block_length}-b{batch}-{'moe' if moe else 'dense'}"
    if key not in _CACHE:
        from sdar_export.cli import export
        from sdar_export.make_checkpoint import make_checkpoint

        root = tmp_path_factory.mktemp(f"tiny-{key}")
        make_checkpoint(root / "ck", preset="tiny", seed=0, moe=moe)
        export(root / "ck", root / "art", dtype=dtype, max_context=128, block_length=block_length,
               batch=batch, quiet=True)
        _CACHE[key] = root
    root = _CACHE[key]
    return root / "ck", root / "art"


PACKAGED_CHECKPOINT = Path(__file__).resolve().parents[1] / "python" / "sdar_rt" / "checkpoints" / "tiny"


def packaged_artifact(tmp_path_factory, *, batch: int = 4, max_context: int = 256) -> Path:
    """The shipped trained checkpoint (it sorts digits) exported once per session: its answers stop
    by themselves, so conversations and the server see real stops and real parallel unmasking."""
    pytest.importorskip("torch")
    pytest.importorskip("sdar_export.cli")
    key = f"packaged-b{batch}-c{max_context}"
    if key not in _CACHE:
        from sdar_export.cli import export

        root = tmp_path_factory.mktemp(key)
        export(PACKAGED_CHECKPOINT, root / "tiny-sort", max_context=max_context, batch=batch, quiet=True)
        _CACHE[key] = root
    return _CACHE[key] / "tiny-sort"


def matmul_runner(monkeypatch, env: str, value: str | None, kernels: str, threads: int = 2):
    """A ``_core.CpuMatmul`` built with the environment variable ``env`` set to ``value`` (unset for
    None): its Matmul reads the switches (SDAR_CPU_GEMM_MIN_ROWS, SDAR_CPU_AMX) when it is built, so
    the variable is unset again right after."""
    from sdar_rt import _core

    if value is None:
        monkeypatch.delenv(env, raising=False)
    else:
        monkeypatch.setenv(env, value)
    runner = _core.CpuMatmul(threads=threads, kernels=kernels)
    monkeypatch.delenv(env, raising=False)
    return runner


def tiny_int4_artifact(tmp_path_factory) -> Path:
    """The tiny checkpoint exported with int4 weights (group 32) and a 4-bit head, batch 2."""
    key = "int4-g32-head4-b2"
    if key not in _CACHE:
        from sdar_export.cli import export

        ck, _ = tiny_artifact(tmp_path_factory, "float32")
        root = tmp_path_factory.mktemp(key)
        export(ck, root / "art", quantize="int4", group_size=32, lm_head_bits=4, max_context=128, batch=2,
               quiet=True)
        _CACHE[key] = root
    return _CACHE[key] / "art"


def assert_same_bits(runners: dict, matrix, K: int, rows, seed: int) -> None:
    """Every runner (``_core.CpuMatmul``, named) gives the first one's result bit for bit on x of each
    row count (random, one large block next to ordinary ones)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    (name, runner), *others = runners.items()
    for M in rows:
        x = rng.standard_normal((M, K)).astype(np.float32)
        x[0, :5] *= 40.0
        y = runner.matmul(matrix, x)
        for other_name, other in others:
            np.testing.assert_array_equal(y, other.matmul(matrix, x),
                                          err_msg=f"{name} vs {other_name}, M={M}")


def assert_prefill_tokens_unchanged(monkeypatch, env: str, artifact: Path, make_engine) -> None:
    """Generates from a 2 x 60-token prompt (120 rows per matmul of its prefill) with ``env`` unset and
    set to 0, the engine built by ``make_engine(setting)`` while the variable holds it, fused and
    separate commits: every generated token equal across the two settings."""
    import numpy as np
    from sdar_rt import Generator

    rng = np.random.default_rng(11)
    prompts = [[int(t) for t in rng.integers(0, 500, 60)] for _ in range(2)]
    outs = []
    for setting in (None, "0"):
        if setting is None:
            monkeypatch.delenv(env, raising=False)
        else:
            monkeypatch.setenv(env, setting)
        engine = make_engine(setting)
        monkeypatch.delenv(env, raising=False)
        gen = Generator(artifact, engine=engine)
        for fused in (True, False):
            out = gen.generate(prompt_ids=prompts, max_new_tokens=16, fused_commit=fused)
            outs.append([o.token_ids for o in out])
    assert outs[0] == outs[2] and outs[1] == outs[3]
    assert all(outs[0]) and all(outs[1])


def quantized_matrix(bits: int, group: int, symmetric: bool, N: int, K: int, seed: int):
    """A random N x K weight matrix quantized by the exporter (round to nearest) and packed in the CPU
    engine's layout, as a ``_core.CpuMatrix`` (skips the test where the exporter is not installed)."""
    import numpy as np
    from sdar_rt import _core

    cpu_pack = pytest.importorskip("sdar_export.cpu_pack")
    quantize = pytest.importorskip("sdar_export.quantize")
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((N, K)).astype(np.float32) * 0.05
    p = cpu_pack.pack_qtensor(quantize.quantize_rtn(w, bits, group, symmetric, np.float32))
    return _core.CpuMatrix(p.format, p.rows, p.cols, p.data, p.scales, p.zero_scales, p.group, p.symmetric)
