"""The machine a benchmark ran on, recorded in its report (read-only queries only)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import psutil


def _read_only(cmd: list[str]) -> str | None:
    """Output of a read-only query command, or None when it is absent or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (proc.stdout + proc.stderr).strip() or None


def jetson_state() -> dict | None:
    """Power mode and clock state on a Jetson (read-only queries; clocks are never changed)."""
    release = Path("/etc/nv_tegra_release")
    if not release.is_file() and shutil.which("nvpmodel") is None:
        return None
    model = Path("/proc/device-tree/model")
    return {
        "model": model.read_text(errors="replace").strip("\x00\n ") if model.is_file() else None,
        "l4t_release": release.read_text().strip() if release.is_file() else None,
        "nvpmodel": _read_only(["nvpmodel", "-q"]),
        "jetson_clocks": _read_only(["jetson_clocks", "--show"]),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The instruction sets the matmul kernels of sdar_rt and its peers choose between.
SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
              "amx_int8", "asimd", "asimddp", "i8mm", "sve")


def _cpu_flags() -> list[str]:
    """The SIMD flags of /proc/cpuinfo among SIMD_FLAGS (empty where it is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in SIMD_FLAGS if f in have]
    except OSError:
        pass
    return []


def machine() -> dict:
    import onnxruntime

    from .. import __version__ as sdar_version

    freq = psutil.cpu_freq()
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "logical_cpus": psutil.cpu_count(logical=True),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_mhz": freq.current if freq else None,
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "python": platform.python_version(),
        "sdar_rt": sdar_version,
        "onnxruntime": onnxruntime.__version__,
        "jetson": jetson_state(),
    }
