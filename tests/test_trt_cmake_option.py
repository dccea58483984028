"""SDAR_WITH_TENSORRT=ON makes a missing TensorRT a configure error naming what is missing and the
fix, instead of the silent build without TensorRT that AUTO gives (runtime/trt/JETSON.md)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_tensorrt_on_without_tensorrt_is_a_configure_error(tmp_path):
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.skip("cmake is not installed")
    missing = tmp_path / "no-tensorrt"
    missing.mkdir()
    done = subprocess.run([cmake, "-S", str(ROOT), "-B", str(tmp_path / "build"), "-DSDAR_WITH_CUDA=OFF",
                           "-DSDAR_WITH_TENSORRT=ON", f"-DTENSORRT_ROOT={missing}",
                           "-DTENSORRT_INCLUDE_DIR=TENSORRT_INCLUDE_DIR-NOTFOUND",
                           "-DTENSORRT_LIBRARY=TENSORRT_LIBRARY-NOTFOUND"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    err = " ".join(done.stderr.split())
    assert "SDAR_WITH_TENSORRT=ON but NvInfer.h / libnvinfer" in err and "TENSORRT_ROOT" in err
