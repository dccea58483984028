"""The native CPU engine of an artifact: ``cpu_weights.bin`` and manifest.json's ``cpu_engine`` section.

The engine itself is C++ (``runtime/cpu/``, ``_core.CpuEngine``): the exported network's math on
weights packed for its kernels, memory-mapped from the artifact, a whole step in C++ on its own
thread pool. It runs dense models exported in float32 (with or without --int4 / --int8); anything
else runs on ONNX Runtime, and ``unavailable_reason`` says why.
"""

from __future__ import annotations

import os
import struct

from . import _core
from .artifact import Artifact, ArtifactError

SECTION = "cpu_engine"
FORMAT_VERSION = 1
MAGIC = b"SDARCPUW"
ACTIVATIONS = ("int8", "float")


_REEXPORT = "re-export the checkpoint with sdar-export (without --no-cpu-engine), or use engine='ort'"


def unavailable_reason(artifact: Artifact) -> str | None:
    """Why the CPU engine cannot run ``artifact`` (None: it can)."""
    m = artifact.manifest
    source = m.get("source") or {}
    if source.get("model_type") == "sdar_moe":
        return ("the CPU engine runs dense models; this MoE (sdar_moe) artifact runs on ONNX Runtime "
                "(engine='ort')")
    if artifact.dtype == "bfloat16":
        from sdar_export.options import BF16_RUNS_ON

        return BF16_RUNS_ON
    if artifact.dtype != "float32":
        return (f"the CPU engine computes in float32 with a float32 K/V cache; this is a {artifact.dtype} "
                "artifact: export without --fp16 (with --int4 or --int8 if wanted), or use "
                "engine='ort'")
    section = m.get(SECTION)
    if not isinstance(section, dict):
        return (f"the artifact has no CPU engine weights (exported with --no-cpu-engine or by an older "
                f"sdar-export); {_REEXPORT}")
    if section.get("format_version") != FORMAT_VERSION:
        return (f"its CPU engine weights have format version {section.get('format_version')!r}, this sdar_rt "
                f"reads {FORMAT_VERSION}; {_REEXPORT}")
    if not (artifact.path / str(section.get("file", ""))).is_file():
        return f"its CPU engine weight file {section.get('file')!r} is missing; {_REEXPORT}"
    return None


def _check_file(artifact: Artifact, section: dict) -> str:
    path = artifact.path / section["file"]
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    if head[:8] != MAGIC or len(head) < 16 or struct.unpack("<I", head[8:12])[0] != FORMAT_VERSION:
        raise ArtifactError(f"{path}: not a CPU engine weight file of format {FORMAT_VERSION}; "
                            f"{_REEXPORT}")
    if size != section.get("bytes"):
        raise ArtifactError(f"{path}: {size} bytes, manifest.json says {section.get('bytes')} (a truncated "
                            f"or replaced file); {_REEXPORT}")
    return str(path)


def default_threads() -> int:
    """Physical cores this process may use (the matmuls gain nothing from a second hyper-thread)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        allowed = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or allowed
    except ImportError:  # pragma: no cover - a dependency of the package
        physical = allowed
    return max(1, min(allowed, physical))


def make_cpu_engine(artifact: Artifact, *, threads: int | None = None, kernels: str = "auto",
                    activations: str = "int8") -> _core.CpuEngine:
    """``_core.CpuEngine`` for ``artifact``; ArtifactError when it cannot run it, ValueError on bad options.

    ``activations``: what quantized weights multiply: "int8" (per-block int8 activations, the fast
    kernels; ONNX Runtime's accuracy level 4 does the same) or "float" (exact, slower).
    ``kernels``: "auto" or a name from ``_core.cpu_kernels_available()``.
    """
    reason = unavailable_reason(artifact)
    if reason is not None:
        raise ArtifactError(f"{artifact.path}: {reason}")
    if activations not in ACTIVATIONS:
        raise ValueError(f"activations must be one of {ACTIVATIONS}, got {activations!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 0):
        raise ValueError(f"threads must be a non-negative integer, got {threads!r}")
    section = artifact.manifest[SECTION]
    path = _check_file(artifact, section)
    try:
        model = _core.CpuModel(path, section["model"], section["tensors"])
    except (KeyError, TypeError) as e:
        raise ArtifactError(f"{artifact.path}: manifest.json's {SECTION} section is incomplete ({e}); "
                            f"{_REEXPORT}") from e
    return _core.CpuEngine(model, threads=threads or default_threads(), kernels=kernels,
                           activations=activations)
