"""Build the TensorRT engine (``trt.plan``) of an exported artifact. Does NOT import torch.

Runs on the target device (engines are tied to the GPU model and the TensorRT version):

    sdar-export ARTIFACT_DIR --engine trt [--workspace-mb N] [--prefill-chunk N]

One plan from the artifact's ``trt`` graph (dynamic token count, the logits of the last L
positions), with one optimization profile per step kind, so the weights are on the GPU once:

    prefill  input_ids [B, L .. prefill_chunk]
    decode   input_ids [B, L]
    fused    input_ids [B, 2L]

and in every profile the past K/V ``[0 .. max_context, B, KVH, D]``. Every network input gets a
shape in every profile, matched by its exact name, rank and element type (an input the build does
not know is an error, never silently left without a profile).

The network is strongly typed: precision is what the ONNX graph says (half weights and K/V;
float32 norms, softmax, RoPE, residual stream and logits), the numerics ONNX Runtime validated at
export. No FP16/BF16 builder flag lets TensorRT move those float32 islands to half precision.

Memory: the device-memory budget (weights + KV cache + scratch) is printed and checked against the
GPU's free memory before the build; ``--workspace-mb`` caps the builder's scratch; the plan goes to
disk through TensorRT's stream writer where it has one (10.14+), else straight from TensorRT's
buffer (never copied into a Python bytes object), and the parser's copy of the weights is released
as soon as the plan is built, before it is written or loaded. On an integrated GPU (Jetson: the
GPU's memory is the board's RAM) the build's peak is budgeted too, against what the OS reports
available (sdar_rt.memory_budget). A timing cache per TensorRT version (``timing-X.Y.Z.cache``)
in the artifact makes rebuilds fast. TF32 is off: float32 stays float32.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import subprocess
from pathlib import Path

from .errors import ExportError
from .weight_store import tensor_bytes

PLAN_FILE = "trt.plan"
TRT_GRAPH = "trt"
STEP_KINDS = ("prefill", "decode", "fused")
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


ONNX_MISSING = 'the TensorRT engine build needs the onnx package: pip install "sdar_rt[trt]"'
# TensorRT's weight-only INT4 is W4A16: the activations (and so the artifact) must be half precision.
INT4_DTYPES = ("float16",)


def require_onnx():
    """The onnx module, or an ExportError naming the extra that brings it (one line)."""
    try:
        import onnx  # noqa: PLC0415
    except ImportError as e:
        raise ExportError(f"{ONNX_MISSING} ({e})") from None
    return onnx


def _cudart():
    for lib in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"):
        try:
            return ctypes.CDLL(lib)
        except OSError:
            continue
    return None


def gpu_info() -> dict:
    """Name, compute capability and whether GPU 0 is integrated (shares the board's RAM, as on
    Jetson) through libcudart (no torch, works on Jetson)."""
    rt = _cudart()
    if rt is not None:
        major, minor, integrated = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        if rt.cudaDeviceGetAttribute(ctypes.byref(major), 75, 0) == 0 and \
                rt.cudaDeviceGetAttribute(ctypes.byref(minor), 76, 0) == 0:
            props = ctypes.create_string_buffer(4096)   # cudaDeviceProp starts with char name[256]
            name = "unknown"
            if rt.cudaGetDeviceProperties(props, 0) == 0:
                name = props.raw[:256].split(b"\0", 1)[0].decode(errors="replace") or name
            # cudaDevAttrIntegrated = 18
            shared = rt.cudaDeviceGetAttribute(ctypes.byref(integrated), 18, 0) == 0 and integrated.value == 1
            return {"gpu": name, "compute_capability": f"{major.value}.{minor.value}", "integrated": shared}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        name, cc = [s.strip() for s in out.splitlines()[0].split(",")]
        return {"gpu": name, "compute_capability": cc, "integrated": False}
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {"gpu": "unknown", "compute_capability": "unknown", "integrated": False}


def device_free_memory() -> int | None:
    """Free bytes of GPU 0 (cudaMemGetInfo; on Jetson the RAM the GPU shares), None without one."""
    rt = _cudart()
    if rt is None:
        return None
    free, total = ctypes.c_size_t(), ctypes.c_size_t()
    if rt.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) != 0:
        return None
    return int(free.value)


def graph_weight_bytes(path: Path) -> int:
    """Bytes of the weights a plan built from the graph holds, read from the ONNX file's tensor
    headers without loading them: every initializer, plus each one a Transpose reads (the tied LM
    head is ``Transpose(embedding table)``: the plan keeps the table for the lookup and its folded
    transpose for the head)."""
    onnx = require_onnx()
    m = onnx.load(str(path), load_external_data=False)
    size = {t.name: tensor_bytes(t) for t in m.graph.initializer}
    folded = sum(size[n.input[0]] for n in m.graph.node if n.op_type == "Transpose" and n.input[0] in size)
    return sum(size.values()) + folded


def profile_shapes(manifest: dict, chunk: int) -> dict[str, dict[str, tuple]]:
    """Per step kind: ``{input name: (min, opt, max)}`` for every input of the trt graph (the
    manifest's graph entry lists them with their dtypes and symbolic shapes)."""
    L, S, B = manifest["block_length"], manifest["max_context"], manifest["batch"]
    m = manifest["model"]
    kvh, D = m["num_kv_heads"], m["head_dim"]
    tokens = {"prefill": (L, chunk, chunk), "decode": (L, L, L), "fused": (2 * L, 2 * L, 2 * L)}
    names = list(manifest["graphs"][TRT_GRAPH]["inputs"])
    out: dict[str, dict[str, tuple]] = {}
    for kind in STEP_KINDS:
        lo, opt, hi = tokens[kind]
        shapes: dict[str, tuple] = {}
        for name in names:
            if name == "input_ids":
                shapes[name] = ((B, lo), (B, opt), (B, hi))
            elif name == "past_len":
                shapes[name] = ((1,), (1,), (1,))
            elif name.startswith(("past_key_", "past_value_")):
                # the cache prefix bound in place: 0 rows (an empty cache) up to the whole cache
                shapes[name] = ((0, B, kvh, D), (S // 2, B, kvh, D), (S, B, kvh, D))
            else:
                raise ExportError(f"the trt graph has an input {name!r} the TensorRT build does not know "
                                  "(CONTRACTS.md step graph I/O); re-export the artifact with this "
                                  "sdar-export")
        out[kind] = shapes
    return out


def _expected_dtypes(trt, manifest: dict) -> dict[str, object]:
    kv = {"float32": trt.DataType.FLOAT, "float16": trt.DataType.HALF, "bfloat16": trt.DataType.BF16}
    out = {}
    for name, spec in manifest["graphs"][TRT_GRAPH]["inputs"].items():
        out[name] = trt.DataType.INT64 if spec["dtype"] == "int64" else kv[spec["dtype"]]
    return out


def check_trt_precision(dtype: str, quantization: dict | None, where: str) -> None:
    """TensorRT runs 4-bit weights only as weight-only INT4 with half-precision activations (W4A16):
    an int4 artifact for TensorRT must be float16 (a bfloat16 artifact's graph computes in float32)."""
    q = quantization or {}
    if (q.get("bits") == 4 or q.get("weights") == "int4") and dtype not in INT4_DTYPES:
        raise ExportError(f"{where}: TensorRT's 4-bit weights are weight-only INT4 with float16 activations "
                          f"(W4A16), but the artifact is {dtype}; export with --fp16 --int4 --quant-format "
                          "QDQ for --engine trt")


def _check_budget(art: Path, manifest: dict, chunk: int, workspace_mb: int, stream_writer: bool,
                  integrated: bool, log) -> dict:
    """Prints the memory budget of the artifact and refuses, before anything is allocated, when the
    GPU cannot hold it: the steady state against the GPU's free memory, and on an integrated GPU
    (the board's RAM) also the build's peak against what the OS says is available."""
    from sdar_rt import memory_budget as mb  # noqa: PLC0415

    config = {}
    if (art / "config.json").is_file():
        config = json.loads((art / "config.json").read_text(encoding="utf-8"))
    shape = mb.artifact_shape(manifest, config)
    dtype, B, L, S = manifest["dtype"], manifest["batch"], manifest["block_length"], manifest["max_context"]
    # bfloat16 artifacts: the graph's matmul weights are already float32 (the exporter folds the casts)
    weights = graph_weight_bytes(art / manifest["graphs"][TRT_GRAPH]["file"])
    scratch = mb.activation_estimate(shape, B, L, chunk, S, dtype) + \
        mb.loop_buffer_bytes(B, L, shape.vocab_size, S, chunk)
    kv = mb.kv_cache_bytes(shape.num_layers, shape.num_kv_heads, shape.head_dim, S, B, dtype)
    budget = mb.DeviceMemoryBudget(weights, kv, scratch, scratch_is_estimate=True)
    peak = mb.build_peak(weights, workspace_mb * mb.MIB, stream_writer=stream_writer)
    available = mb.available_memory(integrated, None if integrated else device_free_memory())
    log(f"device memory: {budget.describe()}; build peak {mb.gib(peak.total)} ({peak.parts})"
        + (f"; {available.describe()}" if available is not None else ""))
    quantized = bool(manifest.get("quantization"))
    if available is not None:
        msg = mb.refusal(budget, available.device, what=f"the model ({dtype}, max_context {S}, batch {B})",
                         kv_per_token=kv // S, block_length=L, max_context=S, quantized=quantized)
        if msg is None and integrated:
            fixes = []
            if not quantized:
                fixes.append("re-export with --fp16 --int4 --quant-format QDQ (4-bit weights: about a "
                             "quarter of fp16's, in every copy the build holds)")
            if workspace_mb > 256:
                fixes.append(f"a smaller --workspace-mb than {workspace_mb} (e.g. 512)")
            fixes.append("build it on an Orin with more RAM and the same JetPack, and copy the artifact here")
            msg = mb.peak_refusal(peak, available, fixes)
        if msg:
            raise ExportError(msg + "; nothing was built")
    return {"weights": weights, "kv_cache": kv, "scratch_estimate": scratch, "build_peak": peak.total}


class _Parsed:
    """The builder, network and parser of one build. The parser owns a host copy of the ONNX
    weights (the network points into it): release() drops both as soon as the plan is built."""

    def __init__(self, trt, logger, graph_path: Path):
        self.builder = trt.Builder(logger)
        self.network = self.builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        self.parser = trt.OnnxParser(self.network, logger)
        # from the file: the parser reads the graph and its external weights itself, no Python copy
        if not self.parser.parse_from_file(str(graph_path)):
            errs = "; ".join(str(self.parser.get_error(i)) for i in range(self.parser.num_errors))
            raise ExportError(f"{graph_path}: TensorRT {trt.__version__} cannot parse the graph: {errs}")

    def release(self) -> None:
        self.parser = None
        self.network = None


def _has_stream_writer(trt) -> bool:
    return hasattr(trt.Builder, "build_serialized_network_to_stream") and hasattr(trt, "IStreamWriter")


def _build_plan(trt, parsed: _Parsed, config, tmp: Path) -> None:
    """Builds the plan into ``tmp`` without a Python copy of it: through TensorRT's stream writer
    (10.14+), else from TensorRT's own buffer via a memoryview, written after the parser's copy of
    the weights is released (the two are never held together)."""
    if _has_stream_writer(trt):
        class PlanWriter(trt.IStreamWriter):
            def __init__(self, f):
                trt.IStreamWriter.__init__(self)
                self.f = f

            def write(self, data):
                self.f.write(data)
                return len(data)

        with open(tmp, "wb") as f:
            ok = parsed.builder.build_serialized_network_to_stream(parsed.network, config, PlanWriter(f))
        parsed.release()
    else:
        plan = parsed.builder.build_serialized_network(parsed.network, config)
        parsed.release()
        ok = plan is not None
        if ok:
            with open(tmp, "wb") as f:
                f.write(memoryview(plan))
        del plan
    if not ok:
        raise ExportError("TensorRT failed to build the engine (see its log above); try a smaller "
                          "--workspace-mb, close other GPU users, or check free memory")


def timing_cache_path(art: Path, version: str) -> Path:
    """The artifact's timing cache for one TensorRT version (a cache is only valid for the version
    that wrote it)."""
    return art / f"timing-{version}.cache"


def _attach_timing_cache(config, path: Path, log) -> None:
    """Starts the build from the saved timing cache; one TensorRT refuses (corrupt, or another
    device) is dropped with a note and the build tunes from an empty cache."""
    blob = path.read_bytes() if path.is_file() else b""
    for data in ((blob, b"") if blob else (b"",)):
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return
        if data:
            log(f"note: TensorRT refused the timing cache {path.name}; building without it")
    log("note: TensorRT gave the build no timing cache; it tunes every layer from scratch")


def _save_timing_cache(config, path: Path, log) -> None:
    """Saves the build's timing cache for the next build (a missing one is a note, never a failed
    build), and removes the caches of other TensorRT versions."""
    cache = config.get_timing_cache()
    data = cache.serialize() if cache is not None else None
    if not data:
        log("note: TensorRT returned no timing cache; the next build tunes from scratch")
        return
    tmp = path.with_suffix(".cache.tmp")
    tmp.write_bytes(memoryview(data))
    os.replace(tmp, path)
    for old in path.parent.glob("timing*.cache"):
        if old != path:
            old.unlink()


def _plan_scratch(trt, logger, plan_path: Path, profiles: dict[str, int]) -> dict[str, int]:
    """Deserialises the plan once (mapped from disk, not read into a Python buffer): proves it
    loads and reads TensorRT's activation memory per profile, the Generator's scratch figure."""
    runtime = trt.Runtime(logger)
    with open(plan_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        engine = runtime.deserialize_cuda_engine(mapped)
    if engine is None:
        raise ExportError(f"TensorRT cannot load the plan it just built ({plan_path}); see its log above")
    if engine.num_optimization_profiles != len(profiles):
        raise ExportError(f"the built plan has {engine.num_optimization_profiles} optimization profiles, "
                          f"expected {len(profiles)}")
    sizes = {}
    for kind, index in profiles.items():
        if hasattr(engine, "get_device_memory_size_for_profile_v2"):
            sizes[kind] = int(engine.get_device_memory_size_for_profile_v2(index))
        else:
            sizes[kind] = int(engine.device_memory_size)
    del engine
    return sizes


def _write_manifest(path: Path, manifest: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _add_profiles(trt, builder, network, config, manifest: dict, chunk: int) -> dict[str, int]:
    """One optimization profile per step kind, every input matched by name, element type and rank."""
    shapes = profile_shapes(manifest, chunk)
    want_dtypes = _expected_dtypes(trt, manifest)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    unknown = [t.name for t in inputs if t.name not in want_dtypes]
    if unknown:
        raise ExportError(f"the parsed trt graph has inputs {unknown} that the manifest does not list; "
                          "re-export the artifact")
    for t in inputs:
        if t.dtype != want_dtypes[t.name]:
            want = manifest["graphs"][TRT_GRAPH]["inputs"][t.name]["dtype"]
            raise ExportError(f"the trt graph's input {t.name!r} is {t.dtype}, the manifest says {want}; "
                              "re-export the artifact")
        if t.is_shape_tensor:
            # TensorRT would need its value on the host at enqueue time; the runtime binds every
            # input (past_len included) as a device tensor.
            raise ExportError(f"TensorRT parsed the trt graph's input {t.name!r} as a shape tensor (a host "
                              "value), but the runtime binds it as a device tensor; re-export the artifact "
                              "with this sdar-export")
    profiles: dict[str, int] = {}
    for kind in STEP_KINDS:
        prof = builder.create_optimization_profile()
        for t in inputs:
            lo, opt, hi = shapes[kind][t.name]
            if len(t.shape) != len(lo):
                raise ExportError(f"the trt graph's input {t.name!r} has rank {len(t.shape)}, the {kind} "
                                  f"profile expects {len(lo)}; re-export the artifact")
            prof.set_shape(t.name, lo, opt, hi)
        profiles[kind] = config.add_optimization_profile(prof)
        if profiles[kind] < 0:
            raise ExportError(f"TensorRT rejected the {kind} optimization profile (see its log above)")
    return profiles


def build_engines(artifact_dir: str | Path, workspace_mb: int = 2048, prefill_chunk: int | None = None,
                  log=print) -> dict:
    """Build ``trt.plan`` from the artifact's trt graph; update manifest.json; return its entry."""
    require_onnx()
    art = Path(artifact_dir)
    mpath = art / "manifest.json"
    if not mpath.is_file():
        raise ExportError(f"{mpath}: not found; `--engine trt` on a directory needs an sdar-export artifact "
                          "(run `sdar-export MODEL_DIR -o ART` first).")
    manifest = json.loads(mpath.read_text(encoding="utf-8"))
    if TRT_GRAPH not in manifest.get("graphs", {}):
        raise ExportError(f"{art}: the artifact has no trt graph (it was exported by an older sdar-export); "
                          "re-export the checkpoint with `sdar-export MODEL_DIR -o ART`.")
    check_trt_precision(manifest["dtype"], manifest.get("quantization"), str(art))
    L, S = manifest["block_length"], manifest["max_context"]
    chunk = prefill_chunk or manifest.get("prefill_chunk") or L
    if chunk % L or not L <= chunk <= S:
        raise ExportError(f"--prefill-chunk {chunk} must be a multiple of the block length {L} in "
                          f"[{L}, {S}].")
    if workspace_mb <= 0:
        raise ExportError(f"--workspace-mb must be positive, got {workspace_mb}")
    graph_path = art / manifest["graphs"][TRT_GRAPH]["file"]
    from .trt_onnx_support import UnsupportedGraph, require_supported  # noqa: PLC0415
    try:
        require_supported(graph_path)
    except UnsupportedGraph as e:
        raise ExportError(str(e)) from e
    trt = import_tensorrt()
    if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        raise ExportError(f"TensorRT {trt.__version__} has no strongly typed networks; the engine build "
                          "needs TensorRT 10 (JetPack 6.1 or newer).")
    info = gpu_info()
    budget = _check_budget(art, manifest, chunk, workspace_mb, _has_stream_writer(trt),
                           bool(info.get("integrated")), log)
    logger = trt.Logger(trt.Logger.WARNING)
    log(f"building TensorRT {trt.__version__} engine from {graph_path.name} on {info['gpu']} "
        f"(profiles: prefill [{L}, {chunk}] tokens, decode {L}, fused {2 * L}; past [0, {S}])")
    parsed = _Parsed(trt, logger, graph_path)
    config = parsed.builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    if hasattr(config, "max_aux_streams"):
        config.max_aux_streams = 0   # one stream: no extra activation memory for parallel branches
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)   # on by default: float32 matmuls would round to TF32
    cache_path = timing_cache_path(art, trt.__version__)
    _attach_timing_cache(config, cache_path, log)
    profiles = _add_profiles(trt, parsed.builder, parsed.network, config, manifest, chunk)

    out = art / PLAN_FILE
    tmp = out.with_suffix(".plan.tmp")
    try:
        _build_plan(trt, parsed, config, tmp)
        del parsed
        _save_timing_cache(config, cache_path, log)
        scratch = _plan_scratch(trt, logger, tmp, profiles)
        plan_bytes = tmp.stat().st_size
        # The manifest never names a plan that is not the one on disk: its old entry goes first.
        manifest["engines"] = [e for e in manifest.get("engines", []) if e.get("kind") != "trt"]
        _write_manifest(mpath, manifest)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    entry = {"kind": "trt", "graph": TRT_GRAPH, "file": out.name, "tensorrt": trt.__version__, **info,
             "profiles": profiles, "prefill_chunk": chunk, "max_context": S, "strongly_typed": True,
             "tf32": False, "workspace_mb": workspace_mb, "plan_bytes": plan_bytes,
             "scratch_bytes": max(scratch.values()), "scratch_bytes_per_profile": scratch,
             "budget_estimate": budget}
    log(f"wrote {out.name}: {plan_bytes / (1 << 20):.1f} MiB plan, "
        f"{max(scratch.values()) / (1 << 20):.1f} MiB scratch")
    manifest["engines"].append(entry)
    _write_manifest(mpath, manifest)
    return entry


def check_artifact_engine(artifact_dir: Path, engine: str) -> None:
    """Refuse to build engines for an artifact whose graphs the engine cannot run (no torch)."""
    from .manifest import read_manifest  # noqa: PLC0415

    try:
        from sdar_rt.artifact import check_engine_support  # noqa: PLC0415
    except Exception:  # sdar_rt not importable: read the manifest directly
        check_engine_support = None
    manifest = read_manifest(artifact_dir)
    if check_engine_support is not None:
        try:
            check_engine_support(manifest, engine, str(artifact_dir / "manifest.json"))
        except ValueError as e:
            raise ExportError(str(e)) from e
    elif (manifest.get("quantization") or {}).get("format") == "MatMulNBits" and engine == "trt":
        raise ExportError(f"{artifact_dir}: MatMulNBits graphs cannot be built by TensorRT; re-export with "
                          "--quant-format QDQ (or --engine trt).")
