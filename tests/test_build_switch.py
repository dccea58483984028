"""The CUDA kernels are compiled where they can run, or where the build asks for them (SDAR_WITH_CUDA).

AUTO (the default) compiles them only when nvcc is found and an NVIDIA driver reports a GPU; ON
compiles them on any machine with nvcc (CI does, to compile-check every .cu file); OFF never.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from sdar_rt import _core

SOURCE = Path(__file__).resolve().parents[1]


def requested_mode() -> str | None:
    """SDAR_WITH_CUDA from SKBUILD_CMAKE_DEFINE (how CI asks for the kernels), if set."""
    for define in os.environ.get("SKBUILD_CMAKE_DEFINE", "").split(";"):
        name, _, value = define.partition("=")
        if name.strip().split(":")[0] == "SDAR_WITH_CUDA":
            return value.strip().upper()
    return None


def gpu_usable() -> bool:
    """What the configure-time probe checks: the driver loads and reports at least one GPU."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


def test_installed_build_follows_the_switch():
    info = _core.build_info()
    assert info["cuda_mode"] in ("AUTO", "ON", "OFF") and info["cuda_reason"]
    if (mode := requested_mode()) is not None:  # the install under test was built with this switch
        assert info["cuda_mode"] == mode, info
    if info["cuda_mode"] == "ON":
        assert info["cuda"], info
    elif info["cuda_mode"] == "OFF":
        assert not info["cuda"], info
    elif not gpu_usable():
        assert not info["cuda"] and "could not run here" in info["cuda_reason"], info


def configure(tmp_path: Path, mode: str) -> str:
    pybind11 = pytest.importorskip("pybind11")
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not on PATH")
    proc = subprocess.run(
        ["cmake", "-S", str(SOURCE), "-B", str(tmp_path / mode), f"-DSDAR_WITH_CUDA={mode}",
         f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_auto_skips_the_kernels_without_a_gpu(tmp_path):
    if gpu_usable():
        pytest.skip("this machine has a GPU: AUTO builds the kernels here")
    out = configure(tmp_path, "AUTO")
    assert "sdar_rt: CUDA kernels OFF: " in out, out
    assert "could not run here (SDAR_WITH_CUDA=AUTO; =ON builds them anyway)" in out, out


def test_on_builds_the_kernels_without_a_gpu(tmp_path):
    if shutil.which("nvcc") is None and not os.environ.get("CUDACXX"):
        pytest.skip("no nvcc: SDAR_WITH_CUDA=ON would (rightly) fail the configure")
    out = configure(tmp_path, "ON")
    assert "sdar_rt: CUDA kernels ON (SDAR_WITH_CUDA=ON): compiling them for architectures" in out, out


def test_ci_runs_the_readme_test_command_with_the_kernels_on():
    """CI compiles the kernels on purpose (its machine has no GPU) and then runs the README's test
    command verbatim."""
    readme = (SOURCE / "README.md").read_text()
    command = next(line for line in readme.splitlines() if line.endswith("&& python -m pytest tests"))
    ci = (SOURCE / ".ci" / "run").read_text().splitlines()
    assert command in ci, command
    switch = ci.index('export SKBUILD_CMAKE_DEFINE="SDAR_WITH_CUDA=ON"')
    assert switch < ci.index(command)
    assert not any(line.startswith(("unset SKBUILD", "export SKBUILD")) for line in ci[switch + 1:])
