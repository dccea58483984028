"""Weight-only quantization of the decoder linears (RTN), and the graph forms each engine runs fast.

Scheme (``QuantScheme``):
  * ``bits`` 4 (``--int4``, groups of ``group_size`` input channels, default 128) or 8 (``--int8``,
    per output channel by default; ``--group-size`` makes it blockwise);
  * symmetric (default): ``w ~= q * s`` with ``s = max|w| / (2^(b-1) - 1)`` per group and
    ``q = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1)`` (zero point 0);
    asymmetric: ``w ~= (q - z) * s`` with ``s = (max - min) / (2^b - 1)`` over the group (range
    widened to include 0) and an integer zero point ``z``.
  * Quantized: every decoder linear (q/k/v/o_proj, gate/up/down_proj, and the MoE experts).
    Kept in the artifact's float dtype: the MoE router (tiny, routing-sensitive), norms, and by
    default the embeddings and the LM head (``--quantize-embeddings`` / ``--quantize-lm-head``).
    ``--lm-head-bits 8`` (implies ``--quantize-lm-head``) gives a 4-bit body an 8-bit head in the
    body's groups: the head is a sixth of a 0.6B model and the most sensitive matmul, and on an
    AVX2 CPU MatMulNBits reads 8-bit blocks no slower than 4-bit ones.
  * The scales are rounded to the artifact dtype *before* the integers are chosen, so the
    dequantized weights ``(q - z) * s`` are exactly what any engine computes; the PyTorch reference
    used for validation is the network with these dequantized weights.
  * ``method``: "rtn", or "awq" (``--awq``): activation-aware per-channel scales, calibrated
    through the float network and folded into the preceding norm / linear (sdar_export.awq), are
    applied first; the RTN step above then quantizes the scaled weights, unchanged.

Graph forms (the three step graphs are exported from the dequantized network, then every MatMul /
Gather that reads a quantized weight is rewritten; weights are matched by content hash, so the
same tensor gets the same packed initializers in prefill, decode and fused, and they share one
external data file when the model is large):
  * ``MatMulNBits`` (ONNX Runtime): ``com.microsoft.MatMulNBits`` (bits 4 or 8, ``accuracy_level``
    4 = int8 activations by default: on CPU it is the fast kernel; level 0 computes in float and is
    *slower* than the float MatMul with onnxruntime 1.32). The packed weights are read directly.
    Per-channel int8 is encoded as blocks of the largest power of two dividing K with the channel's
    scale repeated (MatMulNBits needs power-of-two blocks >= 16). MoE expert stacks (3-D) use the
    QDQ form below (ONNX Runtime dequantizes them per run). Embeddings: ``GatherBlockQuantized``.
  * ``QDQ`` (TensorRT; opset 21): ``DequantizeLinear(int4 [K, N], scale [K/g, N], axis=0,
    block_size=g) -> MatMul`` and per-channel ``DequantizeLinear(int8 [K, N], scale [N], axis=1)
    -> MatMul``: what TensorRT's ONNX parser turns into weight-only INT4/INT8 GEMMs. TensorRT 10.3
    (JetPack 6.x, NvInfer.h): block quantization only for 2-D INT4 weights rooted at constants,
    symmetric only -> the QDQ form refuses ``--asymmetric`` and MoE models. ONNX Runtime 1.32 runs
    this form on CPU as well (it fuses DQ(int4) -> MatMul into MatMulNBits).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ExportError

FORMATS = ("MatMulNBits", "QDQ")
DEFAULT_GROUP_SIZE = {4: 128, 8: None}
DEFAULT_ACCURACY_LEVEL = 4
LINEAR_SUFFIXES = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                   "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                   "mlp.down_proj.weight")
_EXPERT_RE = re.compile(r"\.mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$")


@dataclass(frozen=True)
class QuantScheme:
    bits: int = 4
    group_size: int | None = 128          # None: per output channel (int8 only)
    symmetric: bool = True
    format: str = "MatMulNBits"
    quantize_embeddings: bool = False
    quantize_lm_head: bool = False
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL
    method: str = "rtn"
    lm_head_bits: int | None = None       # None: the body's bits (when quantize_lm_head)

    @property
    def weights(self) -> str:
        return f"int{self.bits}"

    def bits_of(self, name: str) -> int:
        """Bits of one quantized weight (the LM head may differ from the body)."""
        if name == "lm_head.weight" and self.lm_head_bits is not None:
            return self.lm_head_bits
        return self.bits


def make_scheme(weights: str, group_size: int | None = None, symmetric: bool = True,
                fmt: str | None = None, engine: str = "onnx", quantize_embeddings: bool = False,
                quantize_lm_head: bool = False, accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
                dtype: str = "float32", method: str = "rtn", lm_head_bits: int | None = None) -> QuantScheme:
    """Checks the options (clear ExportError on bad combinations) and returns the scheme."""
    if weights not in ("int4", "int8"):
        raise ExportError(f"weight quantization must be 'int4' or 'int8', got {weights!r} "
                          "(--int4 and --int8 are mutually exclusive)")
    bits = int(weights[3:])
    if group_size is None:
        group_size = DEFAULT_GROUP_SIZE[bits]
    if group_size is not None:
        if not isinstance(group_size, int) or group_size < 16 or group_size & (group_size - 1):
            raise ExportError(f"--group-size {group_size} must be a power of two >= 16 (ONNX Runtime's "
                              "MatMulNBits and TensorRT block quantization need it), e.g. 32, 64 or 128.")
    elif bits == 4:
        raise ExportError("--int4 needs a --group-size (per-channel int4 loses too much accuracy); "
                          "use e.g. --group-size 128.")
    if fmt is None:
        fmt = "QDQ" if engine == "trt" else "MatMulNBits"
    if fmt not in FORMATS:
        raise ExportError(f"--quant-format must be one of {FORMATS}, got {fmt!r}")
    if engine == "trt" and fmt != "QDQ":
        raise ExportError("--engine trt cannot run MatMulNBits graphs (an ONNX Runtime contrib op that "
                          "TensorRT's ONNX parser does not know); use --quant-format QDQ (the default "
                          "with --engine trt).")
    if fmt == "QDQ" and bits == 8 and group_size is not None:
        raise ExportError("--int8 --group-size cannot be used with the QDQ/TensorRT form: TensorRT 10.3 "
                          "block quantization is INT4-only (INT8 weights are per channel); "
                          "drop --group-size.")
    if fmt == "QDQ" and not symmetric:
        raise ExportError("--asymmetric cannot be used with the QDQ/TensorRT form: TensorRT 10.3 "
                          "(JetPack 6) supports only symmetric (zero point 0) weight quantization; use "
                          "--symmetric, or --quant-format MatMulNBits for ONNX Runtime.")
    if dtype not in ("float32", "float16"):
        raise ExportError(f"--{weights} needs a float32 or float16 artifact (scales and activations in that "
                          f"dtype), got {dtype}; drop --bf16 (use --fp16).")
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise ExportError(f"accuracy level must be 0..4, got {accuracy_level}")
    if method not in ("rtn", "awq"):
        raise ExportError(f"unknown quantization method {method!r}; use 'rtn' or 'awq'")
    _check_lm_head_bits(lm_head_bits, bits, group_size, fmt)
    return QuantScheme(bits, group_size, symmetric, fmt, quantize_embeddings,
                       quantize_lm_head or lm_head_bits is not None, accuracy_level, method, lm_head_bits)


def _check_lm_head_bits(head: int | None, bits: int, group_size: int | None, fmt: str) -> None:
    if head is None or head == bits:
        return
    if head not in (4, 8):
        raise ExportError(f"--lm-head-bits must be 4 or 8, got {head}")
    if group_size is None:
        raise ExportError("--lm-head-bits 4 needs a --group-size (the head is blocked like the body).")
    if fmt != "MatMulNBits":
        raise ExportError(f"--lm-head-bits {head} with --int{bits} needs --quant-format MatMulNBits: the "
                          "QDQ/TensorRT form takes blocked weights in 4 bits only.")


def check_not_quantized(model_dir: str | Path) -> None:
    """Refuse a checkpoint that is already quantized (GPTQ/AWQ/bitsandbytes/FP8 ...)."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the checkpoint loader reports a missing / broken config.json
    qc = cfg.get("quantization_config") or cfg.get("compression_config")
    if qc:
        method = qc.get("quant_method", "?") if isinstance(qc, dict) else "?"
        raise ExportError(f"{path}: the checkpoint is already quantized (quantization_config, quant_method "
                          f"{method!r}); sdar-export reads float checkpoints (float32/float16/bfloat16). "
                          "Export the original (unquantized) checkpoint, with --int4/--int8 to quantize.")


# --------------------------------------------------------------------------- RTN


@dataclass
class QTensor:
    """One quantized weight, in the [N, K] (out, in) orientation of the HF linear weight.

    ``q``: int8 [N, K] signed integers (zero point already subtracted out of the *stored* form is
    not done: for asymmetric, ``q`` is unsigned in [0, 2^b) and ``zp`` [N, G] holds the zero point).
    ``scale``: [N, G] in the artifact dtype; G = K / block.
    """

    q: np.ndarray
    scale: np.ndarray
    zp: np.ndarray | None
    bits: int
    block: int            # input channels per scale (K for per-channel)

    def dequantize(self) -> np.ndarray:
        """float32 [N, K]: (q - zp) * scale, computed in float32."""
        N, K = self.q.shape
        G = K // self.block
        q = self.q.astype(np.float32).reshape(N, G, self.block)
        if self.zp is not None:
            q = q - self.zp.astype(np.float32)[:, :, None]
        return (q * self.scale.astype(np.float32)[:, :, None]).reshape(N, K)

    def dequantize_rows(self, rows: list[int]) -> np.ndarray:
        """float32 [len(rows), K]: rows of :meth:`dequantize` (an embedding lookup)."""
        part = QTensor(self.q[rows], self.scale[rows], None if self.zp is None else self.zp[rows], self.bits,
                       self.block)
        return part.dequantize()


_RTN_CHUNK = 1 << 23   # weights rounded per pass (rows are independent): bounds the float32 temporaries


def quantize_rtn(w, bits: int, group: int | None, symmetric: bool, scale_dtype) -> QTensor:
    """Round-to-nearest quantization of ``w`` [N, K] along K in groups (None: one group per row),
    a block of rows at a time (the same result as all at once: each row is quantized on its own)."""
    N, K = w.shape
    rows = max(1, _RTN_CHUNK // max(1, K))
    if rows >= N:
        return _quantize_rows(w, bits, group, symmetric, scale_dtype)
    parts = [_quantize_rows(w[r:r + rows], bits, group, symmetric, scale_dtype) for r in range(0, N, rows)]
    zp = None if parts[0].zp is None else np.concatenate([p.zp for p in parts])
    return QTensor(np.concatenate([p.q for p in parts]), np.concatenate([p.scale for p in parts]), zp, bits,
                   parts[0].block)


def _quantize_rows(w: np.ndarray, bits: int, group: int | None, symmetric: bool, scale_dtype) -> QTensor:
    """Round-to-nearest quantization of ``w`` [N, K] along K in groups (None: one group per row)."""
    w = np.asarray(w, dtype=np.float32)
    N, K = w.shape
    block = K if group is None else group
    if K % block:
        raise ExportError(f"group size {block} does not divide the input dimension {K}")
    G = K // block
    x = w.reshape(N, G, block)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        s = np.abs(x).max(-1) / qmax
        s = np.where(s > 0, s, 1.0).astype(scale_dtype)
        sf = s.astype(np.float32)
        q = np.clip(np.rint(x / sf[:, :, None]), -qmax - 1, qmax).astype(np.int8)
        return QTensor(q.reshape(N, K), s, None, bits, block)
    levels = 2 ** bits - 1
    lo = np.minimum(x.min(-1), 0.0)
    hi = np.maximum(x.max(-1), 0.0)
    s = (hi - lo) / levels
    s = np.where(s > 0, s, 1.0).astype(scale_dtype)
    sf = s.astype(np.float32)
    zp = np.clip(np.rint(-lo / sf), 0, levels).astype(np.uint8)
    q = np.clip(np.rint(x / sf[:, :, None]) + zp[:, :, None], 0, levels).astype(np.uint8)
    return QTensor(q.reshape(N, K), s, zp, bits, block)


class SpilledTensors(MutableMapping):
    """QTensors kept on disk (one .npz each) and loaded when asked for: the quantized network is
    never in memory as a whole (its int8 codes alone are half the size of a float16 checkpoint)."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, Path] = {}

    def __setitem__(self, name: str, qt: QTensor) -> None:
        path = self.dir / f"{len(self._files)}.npz"
        arrays = {"q": qt.q, "scale": qt.scale, "bits": np.array(qt.bits), "block": np.array(qt.block)}
        if qt.zp is not None:
            arrays["zp"] = qt.zp
        np.savez(path, **arrays)
        self._files[name] = path

    def __getitem__(self, name: str) -> QTensor:
        with np.load(self._files[name]) as f:
            return QTensor(f["q"], f["scale"], f.get("zp"), int(f["bits"]), int(f["block"]))

    def __delitem__(self, name: str) -> None:
        self._files.pop(name).unlink(missing_ok=True)

    def __iter__(self):
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


@dataclass
class QuantPlan:
    """What was quantized: HF weight name -> QTensor (experts keep their per-expert names), and the
    name each one's dequantized tensor has in the traced graphs (``graph_names``: the HF name, or the
    tuple of one MoE projection's expert names, -> ``w_<content hash>``), which the rewrite replaces."""

    scheme: QuantScheme
    tensors: MutableMapping[str, QTensor] = field(default_factory=dict)
    embed_name: str | None = None     # quantized embedding table (Gather), if any
    scheme_dtype: str = "float32"     # the artifact dtype (scales are stored in it)
    graph_names: dict = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)   # name -> packed bytes (float_head_note)

    def quantized_names(self) -> list[str]:
        return sorted(self.tensors)

    def packed_bytes(self) -> int:
        """Bytes of the quantized weights as stored: codes at their bit width, plus scales."""
        if len(self.sizes) != len(self.tensors):
            self.sizes = {name: _packed_bytes(self.tensors[name]) for name in self.tensors}
        return sum(self.sizes.values())


def _packed_bytes(qt: QTensor) -> int:
    return qt.q.size * qt.bits // 8 + qt.scale.nbytes


def quantizable_names(weights: dict, cfg, scheme: QuantScheme) -> list[str]:
    names = []
    for name in weights:
        if not name.startswith("model.layers."):
            continue
        if name.endswith(LINEAR_SUFFIXES) or _EXPERT_RE.search(name):
            names.append(name)
    if scheme.quantize_lm_head:
        names.append("lm_head.weight")
    if scheme.quantize_embeddings:
        names.append("model.embed_tokens.weight")
    return names


def quantize_source(source, cfg, scheme: QuantScheme, dtype: str, tensors: MutableMapping | None = None,
                    progress=None) -> QuantPlan:
    """RTN-quantize the decoder linears read from a weight source (sdar_export.weight_sources), one
    weight at a time, into ``tensors`` (a dict, or :class:`SpilledTensors` for large models).

    An untied LM head is quantized as ``lm_head.weight``; with tied embeddings and
    ``--quantize-lm-head`` the head gets its own (quantized) copy of the table and the embedding
    table stays float unless ``--quantize-embeddings``.
    """
    if scheme.format == "QDQ" and getattr(cfg, "is_moe", False):
        raise ExportError("MoE checkpoints cannot use the QDQ/TensorRT form: the expert weights are 3-D "
                          "stacks and TensorRT 10.3 dequantizes only 2-D INT4 blocks; use --quant-format "
                          "MatMulNBits (ONNX Runtime).")
    sdt = np.float16 if dtype == "float16" else np.float32
    plan = QuantPlan(scheme, tensors if tensors is not None else {}, scheme_dtype=dtype)
    names = quantizable_names(source.names(), cfg, scheme)
    for i, name in enumerate(names):
        w = source.get(name).float().numpy()   # [out, in]; the embedding table [V, H] is blocked along H
        group = scheme.group_size
        bits = scheme.bits_of(name)
        K = w.shape[1]
        block = group if group is not None else _per_channel_block(K, name, scheme)
        if group is not None and K % group:
            raise ExportError(f"--group-size {group} does not divide the input dimension {K} of {name} "
                              f"(shape {list(w.shape)}); choose a group size that divides {K}, e.g. "
                              f"{_largest_pow2_divisor(K)}.")
        qt = quantize_rtn(w, bits, group, scheme.symmetric, sdt)
        del w
        if group is None:   # per-channel: re-express as `block`-sized groups sharing the channel's scale
            reps = K // block
            qt = QTensor(qt.q, np.repeat(qt.scale, reps, axis=1),
                         None if qt.zp is None else np.repeat(qt.zp, reps, axis=1), qt.bits, block)
        plan.tensors[name] = qt
        plan.sizes[name] = _packed_bytes(qt)
        if ".experts." not in name:
            plan.graph_names[name] = graph_name(qt, dtype, transposed=name != "model.embed_tokens.weight")
        if progress and (i % 50 == 0 or i == len(names) - 1):
            progress(f"quantized {i + 1}/{len(names)} weights")
    for experts in _expert_groups(plan.tensors):
        plan.graph_names[experts] = experts_graph_name([plan.tensors[n] for n in experts], dtype)
    if scheme.quantize_embeddings:
        plan.embed_name = "model.embed_tokens.weight"
    return plan


def quantize_weights(weights: dict, cfg, scheme: QuantScheme, dtype: str,
                     progress=None) -> tuple[dict, QuantPlan]:
    """RTN-quantize the decoder linears of an in-memory HF weight dict (torch tensors).

    Returns (new weight dict with the *dequantized* values in place of the quantized weights, plan).
    """
    import torch

    from .weight_sources import DictWeights  # noqa: PLC0415

    plan = quantize_source(DictWeights(weights, cfg, "float32"), cfg, scheme, dtype, progress=progress)
    out = dict(weights)
    if scheme.quantize_lm_head and "lm_head.weight" not in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    for name, qt in plan.tensors.items():
        out[name] = torch.from_numpy(qt.dequantize())
    return out, plan


def _expert_groups(tensors) -> list[tuple[str, ...]]:
    """Per MoE layer and projection, its experts' names in expert order."""
    groups: dict[tuple[str, str], dict[int, str]] = {}
    for name in tensors:
        if ".experts." in name:
            pre, rest = name.split(".experts.")
            e, proj = rest.split(".", 1)
            groups.setdefault((pre, proj), {})[int(e)] = name
    return [tuple(by_e[e] for e in sorted(by_e)) for by_e in groups.values()]


def _graph_dtype(dtype: str):
    from onnx import TensorProto

    return (np.float16, TensorProto.FLOAT16) if dtype == "float16" else (np.float32, TensorProto.FLOAT)


def graph_name(qt: QTensor, dtype: str, transposed: bool) -> str:
    """The content name the graphs give this weight's dequantized tensor: [in, out] for a matmul,
    [V, H] for the embedding table (see sdar_export.weight_store)."""
    import torch  # noqa: PLC0415

    from .graph_weights import transposed_chunks  # noqa: PLC0415
    from .weight_store import array_name, content_name  # noqa: PLC0415

    npdt, elem = _graph_dtype(dtype)
    w = qt.dequantize().astype(npdt)
    if not transposed:
        return array_name(w, elem)
    return content_name(elem, w.shape[::-1], transposed_chunks(torch.from_numpy(w)))


def experts_graph_name(qts: list[QTensor], dtype: str) -> str:
    """The content name of one projection's dequantized experts stacked [E, in, out]."""
    import torch  # noqa: PLC0415

    from .graph_weights import transposed_chunks  # noqa: PLC0415
    from .weight_store import content_name  # noqa: PLC0415

    npdt, elem = _graph_dtype(dtype)
    N, K = qts[0].q.shape

    def chunks():
        for qt in qts:
            yield from transposed_chunks(torch.from_numpy(qt.dequantize().astype(npdt)))

    return content_name(elem, (len(qts), K, N), chunks())


def float_head_note(plan: QuantPlan, weights, dtype: str) -> str | None:
    """A hint when the LM head left in the float dtype outweighs the whole quantized body: every
    forward reads it (at a 151k vocabulary a float32 head is 622 MB against ~235 MB of 4-bit body
    at 0.6B), so it, not the body, sets the speed of a memory-bound decode step. ``weights``: a
    name -> tensor dict or a weight source (sdar_export.weight_sources)."""
    if plan.scheme.quantize_lm_head:
        return None
    if isinstance(weights, dict):
        head = weights.get("lm_head.weight", weights.get("model.embed_tokens.weight"))
        if head is None:
            return None
        head_bytes = head.numel() * head.element_size()
    else:
        rows, cols = weights.shape("lm_head.weight")
        head_bytes = rows * cols * (2 if dtype == "float16" else 4)
    body_bytes = plan.packed_bytes()
    if head_bytes <= body_bytes:
        return None
    return (f"the {dtype} LM head ({head_bytes / 2**20:.0f} MiB) is larger than the whole quantized body "
            f"({body_bytes / 2**20:.0f} MiB) and is read every forward; --lm-head-bits 8 (or 4) quantizes it")


def _largest_pow2_divisor(k: int) -> int:
    return k & -k


def _per_channel_block(K: int, name: str, scheme: QuantScheme) -> int:
    b = _largest_pow2_divisor(K)
    if b < 16:
        raise ExportError(f"per-channel int8 of {name}: the input dimension {K} has no power-of-two divisor "
                          ">= 16 (MatMulNBits blocks); pass --group-size.")
    return b


# --------------------------------------------------------------------------- graph rewrite


@dataclass
class _Target:
    kind: str              # "matmul2d" | "matmul3d" | "gather"
    names: list[str]       # HF names (experts: one per expert, in order)
    plan: QuantPlan

    @property
    def qts(self) -> list[QTensor]:
        return [self.plan.tensors[n] for n in self.names]


def graph_targets(plan: QuantPlan) -> dict[str, _Target]:
    """Canonical initializer name (as the graphs hold it) -> what to put in its place."""
    targets: dict[str, _Target] = {}
    for key, graph in plan.graph_names.items():
        if isinstance(key, tuple):
            targets[graph] = _Target("matmul3d", list(key), plan)
        elif key == "model.embed_tokens.weight":
            targets[graph] = _Target("gather", [key], plan)
        else:
            targets[graph] = _Target("matmul2d", [key], plan)
    return targets


class PackedTensors:
    """The quantized initializers of each weight, made once and shared by every graph: those of 1 KiB
    or more go to the artifact's weights file (``store``), the graphs keep references to them."""

    def __init__(self, store=None):
        self.store = store
        self._made: dict[str, list] = {}

    def get(self, key: str, make) -> tuple[list, dict]:
        """``make()`` -> (initializers, facts the nodes need), the first time ``key`` is asked for."""
        if key not in self._made:
            from .weight_store import MIN_BYTES  # noqa: PLC0415

            inits, info = make()
            if self.store is not None:
                inits = [self.store.put(t) if len(t.raw_data) >= MIN_BYTES else t for t in inits]
            self._made[key] = (inits, info)
        return self._made[key]


def _int4_tensor(name: str, values: np.ndarray, signed: bool):
    """INT4/UINT4 TensorProto from integer values (two per byte, low nibble first)."""
    from onnx import TensorProto

    v = np.ascontiguousarray(values).reshape(-1).astype(np.int16) & 0xF
    if v.size % 2:
        v = np.concatenate([v, np.zeros(1, v.dtype)])
    packed = (v[0::2] | (v[1::2] << 4)).astype(np.uint8)
    t = TensorProto()
    t.name = name
    t.data_type = TensorProto.INT4 if signed else TensorProto.UINT4
    t.dims.extend(values.shape)
    t.raw_data = packed.tobytes()
    return t


def _array(name: str, a: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(a), name)


def _matmulnbits_inits(base: str, qt: QTensor, scale_dtype):
    """B [N, G, blob] uint8, scales [N*G], zero_points [N * ceil(G*bits/8)] uint8 (asym only).

    Packs the scheme's own integers and scales. onnxruntime.quantization's MatMulNBitsQuantizer
    quantizes from the float weights itself, with another symmetric rounding (scale = the group's
    signed extreme / -8, against max|w| / 7 here, measured with onnxruntime 1.32), so it would
    give different weights from the QDQ (TensorRT) form, the AWQ search and the dequantized
    network the export is validated against."""
    N, K = qt.q.shape
    G = K // qt.block
    u = qt.q.astype(np.int16)
    if qt.zp is None:
        u = u + 2 ** (qt.bits - 1)          # MatMulNBits default zero point is 2^(bits-1)
    u = u.astype(np.uint8).reshape(N, G, qt.block)
    b = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8) if qt.bits == 4 else u
    inits = [_array(base + "_qb", b), _array(base + "_qs", qt.scale.astype(scale_dtype).reshape(-1))]
    if qt.zp is not None:
        z = qt.zp.astype(np.uint8)
        if qt.bits == 4:
            if G % 2:
                z = np.concatenate([z, np.zeros((N, 1), np.uint8)], axis=1)
            z = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
        inits.append(_array(base + "_qz", z.reshape(-1)))
    return inits


def _dq_inits(base: str, qts: list[QTensor], scale_dtype, stacked: bool):
    """DequantizeLinear initializers in the [K, N] (or [E, K, N]) orientation the MatMul reads.

    Returns (inits, attrs): signed int4/int8 data, scales [K/g, N] (blocked) or [N] (per-channel
    int8), zero points (asymmetric only) in the data's type.
    """
    qt0 = qts[0]
    bits, block = qt0.bits, qt0.block
    per_channel = not stacked and bits == 8 and np.all(qt0.scale == qt0.scale[:, :1]) and all(
        np.all(q.scale == q.scale[:, :1]) for q in qts) and all(
        q.zp is None or np.all(q.zp == q.zp[:, :1]) for q in qts)
    datas, scales, zps = [], [], []
    for qt in qts:
        q = qt.q.astype(np.int16)
        zp = None if qt.zp is None else qt.zp.astype(np.int16)
        if zp is not None:   # unsigned (q, zp) -> signed (q - 2^(b-1), zp - 2^(b-1)): same (q - zp)
            q = q - 2 ** (bits - 1)
            zp = zp - 2 ** (bits - 1)
        datas.append(q.T)                                     # [K, N]
        if per_channel:
            scales.append(qt.scale[:, 0])                     # [N]
            zps.append(None if zp is None else zp[:, 0])
        else:
            scales.append(qt.scale.T)                         # [G, N]
            zps.append(None if zp is None else zp.T)
    data = np.stack(datas) if stacked else datas[0]
    scale = (np.stack(scales) if stacked else scales[0]).astype(scale_dtype)
    zpa = None if zps[0] is None else (np.stack(zps) if stacked else zps[0])
    if bits == 4:
        inits = [_int4_tensor(base + "_qd", data, signed=True)]
        if zpa is not None:
            inits.append(_int4_tensor(base + "_qz", zpa, signed=True))
    else:
        inits = [_array(base + "_qd", data.astype(np.int8))]
        if zpa is not None:
            inits.append(_array(base + "_qz", zpa.astype(np.int8)))
    inits.insert(1, _array(base + "_qs", scale))
    kaxis = 1 if stacked else 0
    attrs = {"axis": kaxis + 1} if per_channel else {"axis": kaxis, "block_size": block}
    return inits, attrs


def rewrite_graph(m, targets: dict[str, _Target], scheme: QuantScheme, dtype: str,
                  packed: PackedTensors | None = None) -> dict:
    """Replace every MatMul/Gather reading a target initializer by its quantized form (in place).

    Returns counts {"matmulnbits": n, "dequantize": n, "gather": n}.
    """
    from onnx import helper

    scale_dtype = np.float16 if dtype == "float16" else np.float32
    packed = packed if packed is not None else PackedTensors()
    added: dict[str, object] = {}
    new_nodes = []
    counts = {"matmulnbits": 0, "dequantize": 0, "gather": 0}
    for node in m.graph.node:
        w = None
        if node.op_type == "MatMul" and node.input[1] in targets:
            w = node.input[1]
        elif (node.op_type == "Gather" and node.input[0] in targets
              and targets[node.input[0]].kind == "gather"):
            w = node.input[0]
        if w is None:
            new_nodes.append(node)
            continue
        t = targets[w]
        base = w
        if t.kind == "gather" and scheme.format == "MatMulNBits":
            # GatherBlockQuantized: data [V, H] (uint8 packed for 4-bit), scales [V, H/g]
            inits, info = packed.get(base + ":gather", lambda t=t, base=base: _gather_form(base, t.qts[0],
                                                                                          scale_dtype))
            ins = [base + "_qg", node.input[1], base + "_qs"] + ([base + "_qgz"] if info["zp"] else [])
            new_nodes.append(helper.make_node(
                "GatherBlockQuantized", ins, list(node.output), name=node.name + "_q", domain="com.microsoft",
                bits=info["bits"], block_size=info["block"], gather_axis=0, quantize_axis=1))
            counts["gather"] += 1
        elif t.kind == "gather":
            # QDQ: DequantizeLinear over the [V, H] table blocked along H, then the original Gather
            inits, info = packed.get(base + ":table", lambda t=t, base=base: _table_form(base, t.qts[0],
                                                                                        scale_dtype))
            deq = base + "_deq"
            new_nodes.append(helper.make_node("DequantizeLinear", [x.name for x in inits], [deq],
                                              name=node.name + "_dq", axis=1, block_size=info["block"]))
            new_nodes.append(helper.make_node("Gather", [deq, node.input[1]], list(node.output),
                                              name=node.name, axis=0))
            counts["gather"] += 1
        elif t.kind == "matmul2d" and scheme.format == "MatMulNBits":
            inits, info = packed.get(base + ":nbits", lambda t=t, base=base: _nbits_form(base, t.qts[0],
                                                                                        scale_dtype))
            ins = [node.input[0], base + "_qb", base + "_qs"] + ([base + "_qz"] if info["zp"] else [])
            new_nodes.append(helper.make_node(
                "MatMulNBits", ins, list(node.output), name=node.name + "_q", domain="com.microsoft",
                K=info["K"], N=info["N"], bits=info["bits"], block_size=info["block"],
                accuracy_level=scheme.accuracy_level))
            counts["matmulnbits"] += 1
        else:
            inits, attrs = packed.get(base + ":dq", lambda t=t, base=base: _dq_inits(
                base, t.qts, scale_dtype, stacked=t.kind == "matmul3d"))
            dq_in = [x.name for x in inits]
            deq = base + "_deq"
            new_nodes.append(helper.make_node("DequantizeLinear", dq_in, [deq], name=node.name + "_dq",
                                              **attrs))
            new_nodes.append(helper.make_node("MatMul", [node.input[0], deq], list(node.output),
                                              name=node.name))
            counts["dequantize"] += 1
        for x in inits:
            added.setdefault(x.name, x)
    del m.graph.node[:]
    m.graph.node.extend(new_nodes)
    # drop the float weights nothing reads any more, add the packed ones
    used = {x for n in m.graph.node for x in n.input}
    keep = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    m.graph.initializer.extend(added.values())
    _set_opsets(m, need21=counts["dequantize"] > 0 or (counts["gather"] and scheme.format == "QDQ"),
                need_ms=counts["matmulnbits"] > 0 or (counts["gather"] and scheme.format == "MatMulNBits"))
    return counts


def _gather_form(base: str, qt: QTensor, scale_dtype) -> tuple[list, dict]:
    """GatherBlockQuantized initializers of an embedding table: data [V, H] (two codes per byte for
    4 bits), scales [V, H/g], zero points (asymmetric only)."""
    if qt.bits == 4:
        u = (qt.q.astype(np.int16) + (0 if qt.zp is not None else 8)).astype(np.uint8)
        data = (u[:, 0::2] | (u[:, 1::2] << 4)).astype(np.uint8)
    else:
        data = (qt.q.astype(np.int16) + (0 if qt.zp is not None else 128)).astype(np.uint8)
    inits = [_array(base + "_qg", data), _array(base + "_qs", qt.scale.astype(scale_dtype))]
    if qt.zp is not None:
        z = qt.zp.astype(np.uint8)
        if qt.bits == 4:
            z = (z[:, 0::2] | (z[:, 1::2] << 4)).astype(np.uint8)
        inits.append(_array(base + "_qgz", z))
    return inits, {"bits": qt.bits, "block": qt.block, "zp": qt.zp is not None}


def _table_form(base: str, qt: QTensor, scale_dtype) -> tuple[list, dict]:
    return _dq_table(base, qt, scale_dtype)[0], {"block": qt.block}


def _nbits_form(base: str, qt: QTensor, scale_dtype) -> tuple[list, dict]:
    N, K = qt.q.shape
    return _matmulnbits_inits(base, qt, scale_dtype), {"N": N, "K": K, "bits": qt.bits, "block": qt.block,
                                                        "zp": qt.zp is not None}


def _dq_table(base: str, qt: QTensor, scale_dtype):
    """DequantizeLinear inputs for an embedding table [V, H] blocked along H (axis 1)."""
    q = qt.q.astype(np.int16)
    zp = None if qt.zp is None else qt.zp.astype(np.int16)
    if zp is not None:
        q, zp = q - 2 ** (qt.bits - 1), zp - 2 ** (qt.bits - 1)
    if qt.bits == 4:
        inits = [_int4_tensor(base + "_qtd", q, True)]
        if zp is not None:
            inits.append(_int4_tensor(base + "_qtz", zp, True))
    else:
        inits = [_array(base + "_qtd", q.astype(np.int8))]
        if zp is not None:
            inits.append(_array(base + "_qtz", zp.astype(np.int8)))
    inits.insert(1, _array(base + "_qts", qt.scale.astype(scale_dtype)))
    names = [base + "_qtd", base + "_qts"] + ([base + "_qtz"] if zp is not None else [])
    return inits, names


def _set_opsets(m, need21: bool, need_ms: bool) -> None:
    from onnx import helper

    have = {o.domain: o for o in m.opset_import}
    default = have.get("") or have.get("ai.onnx")
    if need21 and default is not None and default.version < 21:
        default.version = 21
        if m.ir_version < 10:
            m.ir_version = 10          # int4 tensors need IR 10
    if need_ms and "com.microsoft" not in have:
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def make_rewriter(plan: QuantPlan, dtype: str, stats: dict | None = None, store=None):
    """The callable onnx_export.export_graph applies to each graph after canonicalizing names; the
    quantized initializers go to ``store`` (sdar_export.weight_store) once for all graphs."""
    plan.scheme_dtype = dtype
    targets = graph_targets(plan)
    packed = PackedTensors(store)

    def rewrite(m, spec_name: str):
        counts = rewrite_graph(m, targets, plan.scheme, dtype, packed)
        if stats is not None:
            stats[spec_name] = counts
        want = sum(1 for t in targets.values() if t.kind != "gather") if spec_name != "prefill" else None
        if want is not None and counts["matmulnbits"] + counts["dequantize"] < want:
            raise ExportError(f"quantization: only {counts['matmulnbits'] + counts['dequantize']} of {want} "
                              f"quantized weights were found in the {spec_name} graph (exporter bug)")
        return counts

    return rewrite


def manifest_section(plan: QuantPlan, dtype: str, counts: dict, awq=None,
                     validation: dict | None = None) -> dict:
    """The manifest's ``quantization`` section; ``awq``: the AWQ result (sdar_export.awq.AwqResult),
    ``validation``: validate_quantized's record."""
    s = plan.scheme
    section = {
        "weights": s.weights,
        "bits": s.bits,
        "group_size": s.group_size,
        "symmetric": s.symmetric,
        "format": s.format,
        "method": s.method,
        "accuracy_level": s.accuracy_level if s.format == "MatMulNBits" else None,
        "quantized_weights": len(plan.tensors),
        "embeddings": s.weights if s.quantize_embeddings else dtype,
        "lm_head": f"int{s.bits_of('lm_head.weight')}" if s.quantize_lm_head else dtype,
        "nodes": counts,
    }
    if awq is not None:
        section["awq"] = awq.manifest()
    if validation is not None:
        section["validation"] = validation
    return section


def with_accuracy_level(m, level: int):
    """A copy of graph ``m`` with every MatMulNBits at ``level`` (validation: level 0 = float math)."""
    import onnx

    c = onnx.ModelProto()
    c.CopyFrom(m)
    for node in c.graph.node:
        if node.op_type == "MatMulNBits":
            for a in node.attribute:
                if a.name == "accuracy_level":
                    a.i = level
    return c


def group_count(K: int, block: int) -> int:
    return math.ceil(K / block)


# --------------------------------------------------------------------------- validation

EXACT_SESSION_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}
SHIPPED_TOLERANCE = (1e30, 0.0)     # informational: only non-finite outputs fail


def _exact_copies(out_dir: Path, graphs: dict) -> dict[str, str]:
    """Level-0 (float math) copies of MatMulNBits graphs next to them (same external data)."""
    import onnx

    files = {}
    for kind, g in graphs.items():
        m = onnx.load(str(out_dir / g["file"]), load_external_data=False)
        c = with_accuracy_level(m, 0)
        name = f".exact_{g['file']}"
        onnx.save_model(c, str(out_dir / name))
        files[kind] = name
    return files


def validate_quantized(dq_model, float_model, out_dir, graphs: dict, scheme: QuantScheme, block_length: int,
                       max_context: int, batch: int, dtype: str, tolerance, progress=None,
                       shipped: bool = True, segment_bytes: int | None = None) -> tuple[dict, dict]:
    """Three checks of the quantized graphs.

    exact   - every graph with float math in the quantized matmuls (MatMulNBits accuracy_level 0,
              QDQ fusion level 0) vs PyTorch with the same dequantized weights, at the float
              tolerance of the dtype: proves packing, scales, zero points and wiring. Raises.
    shipped - the graphs as written (accuracy_level 4: int8 activations) vs the same reference;
              informational (fails only on non-finite outputs).
    vs_float - decode graph as shipped vs the float (unquantized) network: the quantization error,
              informational.
    Returns ({"exact_max_abs": {graph: err}, "exact_rel" / "shipped_rel" / "vs_float_rel":
    {graph: {"max": worst relative error over outputs, "logits": that of the logits}}}, the exact
    ValidationReports). Relative error = max abs error / max |reference|.
    """
    from .validate import SEGMENT_BYTES, TOLERANCES, as_reference, validate_artifact_graphs

    segments = {"segment_bytes": segment_bytes or SEGMENT_BYTES}
    out_dir = Path(out_dir)
    tol = tolerance or TOLERANCES[dtype]
    dq_model = as_reference(dq_model, block_length, batch)   # computed once for all three checks
    files = {}
    try:
        if scheme.format == "MatMulNBits" and scheme.accuracy_level != 0:
            files = _exact_copies(out_dir, graphs)
        exact = validate_artifact_graphs(dq_model, out_dir, graphs, block_length, max_context, batch, dtype,
                                         tol, progress=progress, files=files,
                                         session_config=EXACT_SESSION_CONFIG,
                                         what="the PyTorch network with the same dequantized weights",
                                         **segments)
    finally:
        for f in files.values():
            (out_dir / f).unlink(missing_ok=True)
    def summary(reports):
        out = {}
        for k, r in reports.items():
            d = {"max": max(r.rel_errors.values(), default=0.0)}
            if "logits" in r.rel_errors:
                d["logits"] = r.rel_errors["logits"]
            out[k] = d
        return out

    res = {"exact_max_abs": {k: max(r.errors.values(), default=0.0) for k, r in exact.items()},
           "exact_rel": summary(exact)}
    if shipped and (scheme.format == "QDQ" or scheme.accuracy_level != 0):
        rep = validate_artifact_graphs(dq_model, out_dir, graphs, block_length, max_context, batch, dtype,
                                       SHIPPED_TOLERANCE, progress=progress,
                                       what="the dequantized network (as shipped)", **segments)
        res["shipped_rel"] = summary(rep)
    if float_model is not None:
        vf = validate_artifact_graphs(float_model, out_dir, {"decode": graphs["decode"]}, block_length,
                                      max_context, batch, dtype, SHIPPED_TOLERANCE, progress=progress,
                                      what="the float network", **segments)
        res["vs_float_rel"] = summary(vf)
    return res, exact
