"""The TensorRT engine of an artifact: the ``*.plan`` files listed in manifest.json's ``engines``.

The engine itself is C++ (``runtime/trt/``, exposed as ``_core.TrtEngine`` in builds where CMake
found TensorRT); it runs on the GPU decoding loop's stream, straight on the device KV cache.
"""

from __future__ import annotations

from . import _core
from .artifact import Artifact, ArtifactError

_BUILD_FIX = (
    "install sdar_rt on a machine where the CUDA toolkit (nvcc) and TensorRT (NvInfer.h, libnvinfer) "
    "are found, e.g. a Jetson with JetPack 6 (README: Jetson Orin / JetPack 6 build), or use engine='ort'"
)


def tensorrt_available() -> bool:
    """Whether this build of sdar_rt has the TensorRT backend."""
    return bool(_core.build_info()["tensorrt"])


def trt_plans(artifact: Artifact) -> list[dict]:
    """The manifest's TensorRT engine entries, as written by `sdar-export ARTIFACT --engine trt`."""
    return [e for e in artifact.manifest.get("engines", []) if e.get("kind", "trt") == "trt"]


def trt_entries(artifact: Artifact) -> list[dict[str, str]]:
    """The artifact's TensorRT engine entries with absolute plan paths; ArtifactError when none."""
    entries = trt_plans(artifact)
    if not entries:
        raise ArtifactError(
            f"{artifact.path}: the artifact has no TensorRT engines; build them on this device with "
            f"`sdar-export {artifact.path} --engine trt`, or use engine='ort'"
        )
    out = []
    for e in entries:
        missing = [k for k in ("graph", "file", "gpu", "compute_capability", "tensorrt") if not e.get(k)]
        if missing:
            raise ArtifactError(
                f"{artifact.path}: a TensorRT engine entry lacks {', '.join(missing)}; rebuild the engines "
                f"with `sdar-export {artifact.path} --engine trt`"
            )
        path = artifact.path / str(e["file"])
        if not path.is_file():
            raise ArtifactError(
                f"{path}: TensorRT engine listed in the manifest is missing; rebuild it with "
                f"`sdar-export {artifact.path} --engine trt`"
            )
        out.append(
            {
                "graph": str(e["graph"]),
                "path": str(path),
                "gpu": str(e["gpu"]),
                "compute_capability": str(e["compute_capability"]),
                "tensorrt": str(e["tensorrt"]),
            }
        )
    return out


def make_trt_engine(artifact: Artifact, *, past_bucket: int = 256, cuda_graphs: bool = True):
    """``_core.TrtEngine`` for ``artifact``; refuses a weight scheme, build or artifact it cannot run."""
    artifact.check_engine("trt")
    if not tensorrt_available():
        raise RuntimeError(f"engine='trt' needs sdar_rt built with TensorRT: {_BUILD_FIX}")
    return _core.TrtEngine(trt_entries(artifact), past_bucket=past_bucket, cuda_graphs=cuda_graphs)
