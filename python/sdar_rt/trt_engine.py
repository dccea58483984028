"""The TensorRT engine of an artifact: the plan listed in manifest.json's ``engines`` (kind "trt").

The engine itself is C++ (``runtime/trt/``, exposed as ``_core.TrtEngine`` in builds where CMake
found TensorRT); it runs on the GPU decoding loop's stream, straight on the device KV cache. One
plan holds every step kind as an optimization profile, so the weights are on the GPU once.

Before the plan is loaded, the device-memory budget (weights + KV cache + scratch,
:mod:`sdar_rt.memory_budget`) is computed, logged (logger ``sdar_rt``, INFO) and checked against
the GPU's free memory: a Generator that cannot fit is refused with both numbers and the fix.
"""

from __future__ import annotations

import logging

from . import _core
from . import memory_budget as mb
from .artifact import Artifact, ArtifactError

log = logging.getLogger("sdar_rt")

_BUILD_FIX = (
    "install sdar_rt on a machine where the CUDA toolkit (nvcc) and TensorRT (NvInfer.h, libnvinfer) "
    "are found, e.g. a Jetson with JetPack 6 (README: Jetson Orin / JetPack 6 build), or use engine='ort'"
)
_REQUIRED = ("file", "gpu", "compute_capability", "tensorrt", "profiles")


def tensorrt_available() -> bool:
    """Whether this build of sdar_rt has the TensorRT backend."""
    return bool(_core.build_info()["tensorrt"])


def trt_plans(artifact: Artifact) -> list[dict]:
    """The manifest's TensorRT engine entries, as written by `sdar-export ARTIFACT --engine trt`."""
    return [e for e in artifact.manifest.get("engines", []) if e.get("kind", "trt") == "trt"]


def trt_plan(artifact: Artifact) -> dict:
    """The artifact's TensorRT plan entry, with the plan's absolute path; ArtifactError when there is
    none or it is incomplete."""
    entries = trt_plans(artifact)
    fix = f"build it on this device with `sdar-export {artifact.path} --engine trt`"
    if not entries:
        raise ArtifactError(f"{artifact.path}: the artifact has no TensorRT plan; {fix}, or use engine='ort'")
    if len(entries) > 1:
        raise ArtifactError(f"{artifact.path}: manifest.json lists {len(entries)} TensorRT plans, expected "
                            f"one; re{fix}")
    e = entries[0]
    missing = [k for k in _REQUIRED if not e.get(k)]
    if missing:
        raise ArtifactError(f"{artifact.path}: the TensorRT plan entry lacks {', '.join(missing)}; re{fix}")
    path = artifact.path / str(e["file"])
    if not path.is_file():
        raise ArtifactError(f"{path}: the TensorRT plan listed in the manifest is missing; re{fix}")
    profiles = e["profiles"]
    if not isinstance(profiles, dict) or not {"prefill", "decode"} <= set(profiles):
        raise ArtifactError(f"{artifact.path}: the TensorRT plan entry has no prefill and decode profiles; "
                            f"re{fix}")
    return {**e, "path": str(path)}


def device_memory_budget(artifact: Artifact, plan: dict | None = None) -> mb.DeviceMemoryBudget:
    """weights (the plan) + KV cache + scratch (the plan's activation memory and the decoding
    loop's buffers) of a TensorRT Generator on ``artifact``."""
    plan = plan or trt_plan(artifact)
    m = artifact.model
    B, L, S = artifact.batch, artifact.block_length, artifact.max_context
    chunk = int(plan.get("prefill_chunk") or artifact.manifest.get("prefill_chunk") or L)
    kv = mb.kv_cache_bytes(m["num_layers"], m["num_kv_heads"], m["head_dim"], S, B, artifact.dtype)
    scratch = int(plan.get("scratch_bytes") or 0) + mb.loop_buffer_bytes(B, L, m["vocab_size"], S, chunk)
    weights = int(plan.get("plan_bytes") or 0) or (artifact.path / str(plan["file"])).stat().st_size
    return mb.DeviceMemoryBudget(weights, kv, scratch)


def available_memory(plan: dict) -> mb.Available | None:
    """What the budget is checked against (None without a GPU): the GPU's free memory, or on an
    integrated GPU (Jetson; the plan records it, and it only loads on the GPU model that built it)
    what the OS reports available, which counts the page cache cudaMemGetInfo leaves out."""
    if not (hasattr(_core, "cuda_memory_info") and _core.cuda_device_count() > 0):
        return None
    integrated = bool(plan.get("integrated"))
    return mb.available_memory(integrated, None if integrated else int(_core.cuda_memory_info()[0]))


def check_device_memory(artifact: Artifact, plan: dict) -> mb.DeviceMemoryBudget:
    """Logs the budget and raises MemoryError (naming both numbers and the fix) when the GPU's
    free memory (on an integrated GPU: the RAM the OS reports available) cannot hold it."""
    budget = device_memory_budget(artifact, plan)
    available = available_memory(plan)
    log.info("%s: device memory %s%s", artifact.path.name, budget.describe(),
             "" if available is None else f"; {available.describe()}")
    if available is None:
        return budget
    m = artifact.model
    per_token = mb.kv_cache_bytes(m["num_layers"], m["num_kv_heads"], m["head_dim"], 1, artifact.batch,
                                  artifact.dtype)
    # The load's peak is the steady state (memory_budget.load_peak with no host copy): the plan is
    # mapped (TensorRT < 10.7) or streamed (10.7+) from its file, never read whole into host memory.
    msg = mb.refusal(budget, available.device, what=f"{artifact.path.name} on TensorRT",
                     kv_per_token=per_token, block_length=artifact.block_length,
                     max_context=artifact.max_context, quantized=bool(artifact.quantization))
    if msg:
        raise MemoryError(msg + " (then rebuild the plan with `sdar-export ARTIFACT --engine trt`)")
    return budget


def make_trt_engine(artifact: Artifact, *, past_bucket: int = 256, cuda_graphs: bool = True):
    """``_core.TrtEngine`` for ``artifact``; refuses a weight scheme, build, artifact or device memory
    it cannot run with."""
    artifact.check_engine("trt")
    if not tensorrt_available():
        raise RuntimeError(f"engine='trt' needs sdar_rt built with TensorRT: {_BUILD_FIX}")
    plan = trt_plan(artifact)
    check_device_memory(artifact, plan)
    fields = {k: str(plan[k]) for k in ("path", "gpu", "compute_capability", "tensorrt")}
    return _core.TrtEngine(fields, {k: int(v) for k, v in plan["profiles"].items()},
                           past_bucket=past_bucket, cuda_graphs=cuda_graphs)
