"""Build TensorRT engines (``*.plan``) from an exported artifact. Does NOT import torch.

Runs on the target device (engines are tied to the GPU model and the TensorRT version):

    sdar-export ARTIFACT_DIR --engine trt [--workspace-mb N]

One engine per graph, static batch and block length, one optimization profile over the past
length ``[0, max_context]`` (and, for prefill, the token count ``[L, prefill_chunk]``). fp16 / bf16
builder flags follow the artifact dtype. A timing cache (``timing.cache``) is kept in the artifact
so rebuilds are fast. The workspace limit bounds builder memory on 8 GB Orins.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
from pathlib import Path

from .errors import ExportError

TIMING_CACHE = "timing.cache"
INSTALL_HINT = (
    "TensorRT's Python package is not installed (`import tensorrt` failed). On a Jetson, install "
    "JetPack (it ships TensorRT; `sudo apt install python3-libnvinfer`); on an x86 machine with an "
    "NVIDIA GPU, `pip install tensorrt` (NVIDIA's index, matching your CUDA). Engines must be built "
    "on the GPU that will run them: export the ONNX artifact anywhere with `sdar-export MODEL_DIR -o "
    "ART`, then run `sdar-export ART --engine trt` on the device.")


def import_tensorrt():
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as e:
        raise ExportError(INSTALL_HINT + f" ({e})") from e
    return trt


def gpu_info() -> dict:
    """Name and compute capability of GPU 0 through libcudart (no torch, works on Jetson)."""
    for lib in ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0"):
        try:
            rt = ctypes.CDLL(lib)
        except OSError:
            continue
        major, minor = ctypes.c_int(), ctypes.c_int()
        if rt.cudaDeviceGetAttribute(ctypes.byref(major), 75, 0) == 0 and \
                rt.cudaDeviceGetAttribute(ctypes.byref(minor), 76, 0) == 0:
            props = ctypes.create_string_buffer(4096)   # cudaDeviceProp starts with char name[256]
            name = "unknown"
            if rt.cudaGetDeviceProperties(props, 0) == 0:
                name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace") or name
            return {"gpu": name, "compute_capability": f"{major.value}.{minor.value}"}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        name, cc = [s.strip() for s in out.splitlines()[0].split(",")]
        return {"gpu": name, "compute_capability": cc}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {"gpu": "unknown", "compute_capability": "unknown"}


def build_engines(artifact_dir: str | Path, workspace_mb: int = 2048, prefill_chunk: int | None = None,
                  graphs: tuple[str, ...] | None = None, log=print) -> list[dict]:
    """Build ``<graph>.plan`` for each graph of the artifact; update manifest.json; return entries."""
    art = Path(artifact_dir)
    mpath = art / "manifest.json"
    if not mpath.is_file():
        raise ExportError(f"{mpath}: not found; `--engine trt` on a directory needs an sdar-export artifact "
                          "(run `sdar-export MODEL_DIR -o ART` first).")
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    trt = import_tensorrt()
    L, S, B = manifest["block_length"], manifest["max_context"], manifest["batch"]
    m = manifest["model"]
    kvh, D = m["num_kv_heads"], m["head_dim"]
    chunk = prefill_chunk or manifest.get("prefill_chunk") or L
    dtype = manifest["dtype"]
    logger = trt.Logger(trt.Logger.WARNING)
    cache_path = art / TIMING_CACHE
    info = gpu_info()
    entries = []
    for name, g in manifest["graphs"].items():
        if graphs and name not in graphs:
            continue
        if g.get("engine") == "ort":   # the ONNX Runtime step graph (contrib ops): not for TensorRT
            continue
        log(f"building TensorRT engine for {g['file']}")
        builder = trt.Builder(logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT < 10
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(art / g["file"])):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ExportError(f"{art / g['file']}: TensorRT {trt.__version__} cannot parse the graph: {errs}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        if dtype == "float16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif dtype == "bfloat16":
            config.set_flag(trt.BuilderFlag.BF16)
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
        prof = builder.create_optimization_profile()
        T = g["tokens"]
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if t.name == "input_ids":
                lo, hi = (T, T) if T else (L, chunk)
                prof.set_shape(t.name, (B, lo), (B, hi), (B, hi))
            elif t.name.startswith("past_"):
                prof.set_shape(t.name, (0, B, kvh, D), (S // 2, B, kvh, D), (S, B, kvh, D))
        config.add_optimization_profile(prof)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise ExportError(f"TensorRT failed to build {g['file']} (see the log above); try a larger "
                              "--workspace-mb or check free memory.")
        out = art / (name + ".plan")
        tmp = out.with_suffix(".plan.tmp")
        tmp.write_bytes(bytes(plan))
        os.replace(tmp, out)
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        entries.append({"kind": "trt", "graph": name, "file": out.name, "tensorrt": trt.__version__,
                        "workspace_mb": workspace_mb, "prefill_chunk": chunk if T is None else None, **info})
    rebuilt = {x["graph"] for x in entries}
    manifest["engines"] = [e for e in manifest.get("engines", [])
                           if not (e.get("kind") == "trt" and e.get("graph") in rebuilt)]
    manifest["engines"] += entries
    tmp = mpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, mpath)
    return entries
