"""llama.cpp's own tools for the ``llama.cpp`` baseline: its converter, ``llama-quantize`` and
``llama-bench``, built once for this CPU.

The source is llama-cpp-python's source distribution on PyPI (pinned below), which carries llama.cpp
(``vendor/llama.cpp``: ``convert_hf_to_gguf.py``, ``gguf-py`` and the C++ sources), fetched with pip,
or a llama.cpp source tree the user names (``--llama-cpp DIR``). The two tools are built with CMake
(CPU only) into the llama.cpp home: ``$SDAR_LLAMA_CPP_HOME``, else ``llama.cpp`` in sdar_rt's cache.
By default the build is ``GGML_NATIVE``: every instruction set this CPU has, as llama.cpp's own
default build does. Timed against an sdar_rt kernel table narrower than the CPU (``--cpu-kernels
avx2`` on an AVX-512 CPU: what a CPU with only AVX2 would get), llama.cpp is built for that table's
instruction set instead (:data:`ISA_OPTIONS`), in a build folder of its own, so that both sides of
the comparison use the same instructions. A first build takes minutes; later runs reuse it.
Whatever fails (no pip, no network, no compiler, a broken tree) is raised as
:class:`LlamaCppUnavailable` with the reason, which sdar-bench reports as the comparison skipped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..artifact_cache import cache_root

LLAMA_CPP_PYTHON = "0.3.36"  # the llama-cpp-python release whose llama.cpp is fetched by default
TOOLS = ("llama-bench", "llama-quantize")
# What convert_hf_to_gguf.py imports (gguf-py comes with the source tree).
CONVERTER_MODULES = ("torch", "numpy", "transformers", "sentencepiece", "yaml")
INSTALL = 'pip install "sdar_rt[bench]" torch==2.13.0'
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_CUDA=OFF",
    "-DGGML_METAL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_CURL=OFF",
)

# llama.cpp builds for the x86 instruction sets of sdar_rt's kernel tables (GGML_NATIVE off): what
# each table's CPU check requires, nothing more (no AMX, no AVX-512 BF16 or VBMI).
_AVX2 = (
    "-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON",
)
ISA_OPTIONS = {
    "avx2": (*_AVX2, "-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512=OFF"),
    "avxvnni": (*_AVX2, "-DGGML_AVX_VNNI=ON", "-DGGML_AVX512=OFF"),
    "avx512vnni": (
        *_AVX2, "-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_VBMI=OFF",
        "-DGGML_AVX512_BF16=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF",
    ),
}


def isa_for(kernels: str, available: list[str]) -> str | None:
    """The instruction set to build llama.cpp for when sdar_rt runs kernel table ``kernels``: None
    (native) for ``auto`` and for the table this CPU picks by itself (``available[0]``), the table's
    name when it is narrower and llama.cpp has a build for it, else None."""
    if kernels == "auto" or not available or kernels == available[0]:
        return None
    return kernels if kernels in ISA_OPTIONS else None


class LlamaCppUnavailable(RuntimeError):
    """llama.cpp could not be fetched, built or run here; the message says why and what to do."""


@dataclass(frozen=True)
class Tools:
    source: Path  # the llama.cpp source tree (convert_hf_to_gguf.py, gguf-py)
    bench: Path
    quantize: Path
    version: str  # what the cached GGUF files are named after
    isa: str = "native"  # the instruction sets llama.cpp was built for

    def converter_command(self) -> list[str]:
        return [sys.executable, "-m", "sdar_rt.bench.llamacpp_convert", str(self.source)]


def home() -> Path:
    """Where llama.cpp is fetched and built."""
    env = os.environ.get("SDAR_LLAMA_CPP_HOME")
    return Path(env).expanduser() if env else cache_root() / "llama.cpp"


def converter_missing() -> str | None:
    """Why llama.cpp's converter cannot run in this Python (a module it imports is missing), or None."""
    missing = [m for m in CONVERTER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return f"llama.cpp's converter needs {', '.join(missing)}: {INSTALL}"
    return None


def _tree_ok(source: Path) -> str | None:
    for name in ("CMakeLists.txt", "convert_hf_to_gguf.py", "gguf-py"):
        if not (source / name).exists():
            return f"{source} is not a llama.cpp source tree (no {name})"
    return None


def _built(build: Path) -> dict[str, Path] | None:
    paths = {t: build / "bin" / t for t in TOOLS}
    return paths if all(os.access(p, os.X_OK) for p in paths.values()) else None


def _run_logged(cmd: list[str], log: Callable[[str], None], what: str, cwd: Path | None = None) -> None:
    """Runs ``cmd``; shows its progress (CMake's ``[ NN%]`` every 10%, pip's lines as they come) and
    raises LlamaCppUnavailable with the output's tail when it fails."""
    tail: list[str] = []
    shown = -10
    try:
        proc = subprocess.Popen(
            cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as exc:
        raise LlamaCppUnavailable(f"{what}: {exc}") from exc
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip():
            tail = (tail + [line.strip()])[-15:]
        m = re.match(r"\[\s*(\d+)%\]", line)
        if m and int(m.group(1)) >= shown + 10:
            shown = int(m.group(1)) // 10 * 10
            log(f"{what}: {m.group(1)}%")
        elif line.startswith(("Collecting", "Saved", "Downloading")):
            log(f"{what}: {line.strip()}")
    if proc.wait() != 0:
        raise LlamaCppUnavailable(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail[-6:]))


def _fetch(where: Path, log: Callable[[str], None]) -> Path:
    """llama-cpp-python's source distribution unpacked under ``where``; returns its llama.cpp tree."""
    tree = where / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    if _tree_ok(tree) is None:
        return tree
    sdist_dir = where / "sdist"
    sdist = sdist_dir / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.is_file():
        if importlib.util.find_spec("scikit_build_core") is None:  # pip reads the sdist's metadata with it
            raise LlamaCppUnavailable(f"fetching llama.cpp with pip needs scikit-build-core: {INSTALL}")
        log(f"fetching llama-cpp-python {LLAMA_CPP_PYTHON}'s source (llama.cpp) with pip")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--no-build-isolation",
            "--dest",
            str(sdist_dir),
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
        ]
        _run_logged(cmd, log, "pip download")
        if not sdist.is_file():
            raise LlamaCppUnavailable(f"pip download did not write {sdist.name}")
    log(f"unpacking llama.cpp from {sdist.name}")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    try:
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            tar.extractall(where, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise LlamaCppUnavailable(f"{sdist.name} could not be unpacked: {exc}") from exc
    if why := _tree_ok(tree):
        raise LlamaCppUnavailable(why)
    return tree


def build_tools(tree: Path, build: Path, isa: str | None, log: Callable[[str], None]) -> dict[str, Path]:
    """llama.cpp's tools from ``tree``, built in ``build`` (for this CPU, or for instruction set ``isa``)
    unless they are there already: tool name -> path."""
    if isa is not None and isa not in ISA_OPTIONS:
        raise ValueError(f"no llama.cpp build for instruction set {isa!r}; one of {', '.join(ISA_OPTIONS)}")
    paths = _built(build)
    if paths is not None:
        return paths
    if shutil.which("cmake") is None:
        raise LlamaCppUnavailable("building llama.cpp needs cmake and a C++ compiler (pip install cmake)")
    native = ("-DGGML_NATIVE=ON",) if isa is None else ("-DGGML_NATIVE=OFF", *ISA_OPTIONS[isa])
    log(f"building llama.cpp's {' and '.join(TOOLS)} for {'this CPU' if isa is None else isa + ' only'} "
        f"(once; minutes) in {build}")
    _run_logged(["cmake", "-S", str(tree), "-B", str(build), *CMAKE_OPTIONS, *native], log, "cmake configure")
    jobs = str(max(1, min(os.cpu_count() or 1, 8)))
    _run_logged(["cmake", "--build", str(build), "-j", jobs, "--target", *TOOLS], log, "cmake build")
    paths = _built(build)
    if paths is None:
        raise LlamaCppUnavailable(f"the llama.cpp build in {build} did not produce {', '.join(TOOLS)}")
    return paths


def tools(
    source: str | Path | None = None, log: Callable[[str], None] = print, isa: str | None = None
) -> Tools:
    """llama.cpp's tools, fetched and built on first use. ``source``: a llama.cpp source tree to use
    instead of llama-cpp-python's (built into the home under a name derived from its path); ``isa``:
    a key of :data:`ISA_OPTIONS` to build for that instruction set instead of this CPU's own."""
    if why := converter_missing():
        raise LlamaCppUnavailable(why)
    if source is not None:
        tree = Path(source).expanduser().resolve()
        if why := _tree_ok(tree):
            raise LlamaCppUnavailable(why)
        digest = hashlib.sha1(str(tree).encode()).hexdigest()[:12]
        where, version = home() / f"src-{digest}", f"src-{digest}"
    else:
        where, version = home() / LLAMA_CPP_PYTHON, f"llama-cpp-python{LLAMA_CPP_PYTHON}"
    where.mkdir(parents=True, exist_ok=True)
    tree = tree if source is not None else _fetch(where, log)
    paths = build_tools(tree, where / ("build" if isa is None else f"build-{isa}"), isa, log)
    return Tools(tree, paths["llama-bench"], paths["llama-quantize"], version, isa or "native")
