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
