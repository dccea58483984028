"""Export the step graphs of CONTRACTS.md (prefill, decode, fused, ONNX Runtime's step and TensorRT's
trt) to ONNX.

I/O (all graphs): inputs ``input_ids`` [B,T] int64, ``past_len`` [1] int64, ``past_key_{i}`` /
``past_value_{i}`` [P,B,KVH,D]; outputs ``logits`` [B,NL,V] float32 (not in prefill),
``present_key_{i}`` / ``present_value_{i}`` [T,B,KVH,D]. P is a dynamic axis (0 allowed); B is
static; T is static for decode (L) / fused (2L) and a dynamic multiple of L for prefill. The
``step`` graph has a dynamic T and a ``num_logits`` [1] int64 input (logits of the last NL rows,
0 allowed), and gets the ONNX Runtime-only rewrites of :mod:`sdar_export.ort_graph`. The ``trt``
graph is the network of the three standard graphs with a dynamic T (any multiple of L) and the
logits of the last L positions, in plain ONNX ops: TensorRT builds one plan from it with one
optimization profile per step kind, so the weights are on the GPU once (a prefill pass computes
L rows of logits it does not need: under 1% of a 512-token chunk's work).

Exported with the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` (opset 18 default):
it handles the dynamic past axis, P == 0 included, and keeps plain ONNX ops (MatMul, Softmax,
Where, TopK, ...) that TensorRT 10.3 (JetPack 6.2) parses.

dtypes (storage of weights and K/V; logits always float32, residual stream float32):
  float32  - compute float32.
  float16  - compute float16 (ONNX Runtime CPU runs fp16 MatMul/Add/Softmax etc.; checked with
             onnxruntime 1.32).
  bfloat16 - weights and K/V stored bf16, matmuls in float32 (Cast after each weight / cache
             read): ONNX Runtime CPU has no bf16 kernel for MatMul, Add, Mul, Where, Softmax, so a
             bf16-compute graph could not be validated (or run) on CPU. TensorRT with the bf16
             flag may still lower the fp32 matmuls.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .model import SDARModel, dtype_name

PROTOBUF_LIMIT = 2 * 1024**3
EXTERNAL_DATA_THRESHOLD = int(1.8 * 1024**3)   # leave room for the graph itself


@dataclass(frozen=True)
class GraphSpec:
    name: str            # prefill | decode | fused | step
    tokens: int | None   # static T, or None for the dynamic (multiple of L) token axis
    logits: int          # number of logits rows (0 = no LM head); the step graph: most rows asked
    logits_input: bool = False   # step: the row count is the ``num_logits`` input (0 .. T)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"


STEP_GRAPH = "step"
TRT_GRAPH = "trt"
STEP_KINDS = ["prefill", "decode", "fused"]


def graph_specs(block_length: int, step: bool = True, trt: bool = True) -> list[GraphSpec]:
    """The three standard-op graphs; with ``trt`` TensorRT's graph (dynamic T, the logits of the
    last L positions, plain ONNX ops); with ``step`` the ONNX Runtime step graph (dynamic T plus a
    ``num_logits`` input). Each of the last two serves prefill (T in [L, chunk]), decode (T = L)
    and fused (T = 2L) from one set of weights."""
    L = block_length
    specs = [GraphSpec("prefill", None, 0), GraphSpec("decode", L, L), GraphSpec("fused", 2 * L, L)]
    if trt:
        specs.append(GraphSpec(TRT_GRAPH, None, L))
    if step:
        specs.append(GraphSpec(STEP_GRAPH, None, L, logits_input=True))
    return specs


def input_names(num_layers: int, num_logits: bool = False) -> list[str]:
    names = ["input_ids", "past_len"] + (["num_logits"] if num_logits else [])
    for i in range(num_layers):
        names += [f"past_key_{i}", f"past_value_{i}"]
    return names


def output_names(num_layers: int, with_logits: bool) -> list[str]:
    names = ["logits"] if with_logits else []
    for i in range(num_layers):
        names += [f"present_key_{i}", f"present_value_{i}"]
    return names


class StepGraph(torch.nn.Module):
    """Flat-argument wrapper of SDARModel for one graph kind (what gets traced)."""

    def __init__(self, model: SDARModel, block_length: int, num_logits: int, logits_input: bool = False):
        super().__init__()
        self.model, self.L, self.NL = model, block_length, num_logits
        self.logits_input = logits_input
        self.n = model.num_layers

    def forward(self, input_ids, past_len, *rest):
        nl, past = (rest[0], rest[1:]) if self.logits_input else (self.NL, rest)
        pk = list(past[0::2])
        pv = list(past[1::2])
        logits, ks, vs = self.model(input_ids, past_len, pk, pv, self.L, nl)
        out = [logits] if logits is not None else []
        for k, v in zip(ks, vs, strict=True):
            out += [k, v]
        return tuple(out)


def example_inputs(model: SDARModel, batch: int, T: int, P: int, past_len: int, seed: int = 0,
                   num_logits: int | None = None):
    """(input_ids, past_len, [num_logits,] past_key_0, past_value_0, ...) with random finite cache
    contents; ``num_logits`` (the step graph's input) is included when given."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (batch, T), generator=g, dtype=torch.int64)
    pl = torch.tensor([past_len], dtype=torch.int64)
    head = (ids, pl) if num_logits is None else (ids, pl, torch.tensor([num_logits], dtype=torch.int64))
    past = []
    for _ in range(cfg.num_hidden_layers):
        for _kv in range(2):
            past.append(torch.randn(P, batch, cfg.num_key_value_heads, cfg.head_dim,
                                    generator=g).to(model.dtype_))
    return (*head, *past)


def export_graph(model: SDARModel, spec: GraphSpec, path: str | Path, block_length: int, batch: int = 1,
                 opset: int = 18, external_data_threshold: int | None = None,
                 shared_data: SharedWeights | None = None, rewrite=None) -> Path:
    """Trace and write one step graph.

    ``rewrite(model_proto, graph_name)``, when given, edits the graph after its initializers got
    their canonical names and before it is saved (weight quantization, sdar_export.quantize).

    Weights go to external data when over ~1.8 GB (protobuf's 2 GB limit): into ``shared_data``
    when given (one file for all graphs), else into ``<file>.data``.
    """
    import onnx

    path = Path(path)
    L, n = block_length, model.num_layers
    T_ex = spec.tokens if spec.tokens is not None else 2 * L
    args = example_inputs(model, batch, T_ex, P=2 * L + 1, past_len=L,
                          num_logits=spec.logits if spec.logits_input else None)
    in_names = input_names(n, spec.logits_input)
    out_names = output_names(n, spec.logits > 0)
    dyn: dict[str, dict[int, str]] = {}
    for i in range(n):
        dyn[f"past_key_{i}"] = {0: "past_seq"}
        dyn[f"past_value_{i}"] = {0: "past_seq"}
    if spec.tokens is None:
        dyn["input_ids"] = {1: "new_tokens"}
        for i in range(n):
            dyn[f"present_key_{i}"] = {0: "new_tokens"}
            dyn[f"present_value_{i}"] = {0: "new_tokens"}
    if spec.logits_input:
        dyn["logits"] = {1: "num_logits"}
    wrapper = StepGraph(model, L, spec.logits, spec.logits_input).eval()
    # The TorchScript exporter writes one external file per tensor next to the model when the graph
    # is over 2 GB: trace into a private scratch dir, then re-save as one file (+ one .data file).
    scratch = Path(tempfile.mkdtemp(prefix=f".scratch_{spec.name}_", dir=path.parent))
    try:
        tmp = scratch / spec.file
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, args, str(tmp), input_names=in_names, output_names=out_names,
                              dynamic_axes=dyn, opset_version=opset, do_constant_folding=True,
                              dynamo=False)
        m = onnx.load(str(tmp))  # pulls in any external data the exporter wrote next to it
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    m.producer_name = "sdar_export"
    restore_unused_inputs(m, in_names, model, batch, dynamic_tokens=spec.tokens is None)
    canonicalize_initializers(m)
    if spec.logits_input:
        from .ort_graph import fold_static_shapes  # noqa: PLC0415
        fold_static_shapes(m)   # before the quantization rewrite: shape inference needs standard ops
    if rewrite is not None:
        rewrite(m, spec.name)
    if spec.logits_input:
        from .ort_graph import optimize_for_ort  # noqa: PLC0415
        optimize_for_ort(m, rope=rope_tables(model))
    limit = EXTERNAL_DATA_THRESHOLD if external_data_threshold is None else external_data_threshold
    if shared_data is None and sum(len(t.raw_data) for t in m.graph.initializer) > limit:
        shared_data = SharedWeights(path.with_name(path.name + ".data"))
    if shared_data is not None:
        shared_data.externalize(m)
    onnx.save_model(m, str(path))
    return path


def rope_tables(model: SDARModel) -> tuple:
    """cos / sin [max_position_embeddings, head_dim / 2] float32 of every position, computed as
    SDARModel.forward does (float position * inv_freq): the step graph's RotaryEmbedding reads them."""
    pos = torch.arange(model.config.max_position_embeddings, dtype=torch.int64).float()
    freqs = pos.unsqueeze(-1) * model.inv_freq.unsqueeze(0)
    return freqs.cos().numpy(), freqs.sin().numpy()


def canonicalize_initializers(m) -> None:
    """Rename every initializer to ``w_<sha256 of dtype, shape, bytes>`` (identical tensors merged).

    The same weight then has the same name in every graph, so they share one external data file
    (one copy on disk). In memory, ONNX Runtime prepacks matmul weights per session (a copy each,
    and ``session.disable_prepacking`` makes 4-token matmuls ~2.7x slower on CPU), so the engine
    runs every kind on the one ``step`` graph instead of sharing initializers between sessions.
    """
    import hashlib

    from onnx import numpy_helper

    rename: dict[str, str] = {}
    keep = []
    seen: set[str] = set()
    for t in m.graph.initializer:
        if not t.raw_data:  # typed-field storage: normalise to raw bytes
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
        h = hashlib.sha256(f"{t.data_type}:{list(t.dims)}:".encode() + t.raw_data).hexdigest()[:24]
        new = f"w_{h}"
        rename[t.name] = new
        if new not in seen:
            seen.add(new)
            t.name = new
            keep.append(t)
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep)
    for node in m.graph.node:
        for i, x in enumerate(node.input):
            if x in rename:
                node.input[i] = rename[x]


class SharedWeights:
    """One external data file shared by every graph of the artifact (``weights.onnx.data``).

    Each distinct initializer (by canonical name) is written once, 64-byte aligned; every graph
    that uses it points at the same offset. Disk size is one copy of the weights, not three.
    """

    ALIGN = 64
    MIN_BYTES = 1024   # smaller tensors stay inside the graph

    def __init__(self, path: Path):
        self.path = Path(path)
        self.index: dict[str, tuple[int, int]] = {}
        self.path.write_bytes(b"")

    def externalize(self, m) -> None:
        from onnx import TensorProto

        with open(self.path, "ab") as f:
            for t in m.graph.initializer:
                n = len(t.raw_data)
                if n < self.MIN_BYTES:
                    continue
                if t.name not in self.index:
                    off = f.tell()
                    pad = (-off) % self.ALIGN
                    f.write(b"\0" * pad)
                    self.index[t.name] = (off + pad, n)
                    f.write(t.raw_data)
                off, n = self.index[t.name]
                t.ClearField("raw_data")
                t.data_location = TensorProto.EXTERNAL
                del t.external_data[:]
                for k, v in (("location", self.path.name), ("offset", str(off)), ("length", str(n))):
                    e = t.external_data.add()
                    e.key, e.value = k, v


def restore_unused_inputs(m, in_names: list[str], model: SDARModel, batch: int,
                          dynamic_tokens: bool) -> list[str]:
    """Re-declare graph inputs the tracer dropped because nothing reads them, in contract order.

    In prefill (no LM head) the last layer's attention output is dead code (only its K/V, computed
    before attention, is an output), so ``past_key_{n-1}``/``past_value_{n-1}`` are unused. They stay
    declared inputs so every graph has the same I/O; ONNX Runtime accepts unused inputs. TensorRT
    drops unused inputs from an engine: the manifest lists them under ``unused_inputs``.
    """
    from onnx import TensorProto, helper

    have = {i.name: i for i in m.graph.input}
    missing = [n for n in in_names if n not in have]
    if not missing:
        return []
    cfg = model.config
    elem = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16,
            torch.bfloat16: TensorProto.BFLOAT16}[model.dtype_]
    new = []
    for name in in_names:
        if name in have:
            new.append(have[name])
        elif name == "input_ids":
            new.append(helper.make_tensor_value_info(
                name, TensorProto.INT64, [batch, "new_tokens" if dynamic_tokens else None]))
        elif name in ("past_len", "num_logits"):
            new.append(helper.make_tensor_value_info(name, TensorProto.INT64, [1]))
        else:
            new.append(helper.make_tensor_value_info(
                name, elem, ["past_seq", batch, cfg.num_key_value_heads, cfg.head_dim]))
    del m.graph.input[:]
    m.graph.input.extend(new)
    return missing


def unused_inputs(path: str | Path) -> list[str]:
    """Graph inputs that no node reads (see restore_unused_inputs)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    used = set()
    def walk(g):
        for node in g.node:
            used.update(node.input)
            for a in node.attribute:
                if a.g is not None and a.g.node:
                    walk(a.g)
    walk(m.graph)
    return [i.name for i in m.graph.input if i.name not in used]


SHARED_DATA_FILE = "weights.onnx.data"


def export_all(model: SDARModel, out_dir: str | Path, block_length: int, batch: int = 1, opset: int = 18,
               progress=None, external_data_threshold: int | None = None, rewrite=None,
               step: bool = True, trt: bool = True) -> dict[str, dict]:
    """Export prefill/decode/fused (and the TensorRT and ONNX Runtime graphs) into out_dir. Returns
    the manifest ``graphs`` section.

    Models whose weights exceed the protobuf limit get one shared ``weights.onnx.data`` file.
    """
    out_dir = Path(out_dir)
    limit = EXTERNAL_DATA_THRESHOLD if external_data_threshold is None else external_data_threshold
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    shared = SharedWeights(out_dir / SHARED_DATA_FILE) if weight_bytes > limit else None
    graphs = {}
    for spec in graph_specs(block_length, step=step, trt=trt):
        if progress:
            progress(f"exporting {spec.file}")
        export_graph(model, spec, out_dir / spec.file, block_length, batch=batch, opset=opset,
                     external_data_threshold=external_data_threshold, shared_data=shared, rewrite=rewrite)
        graphs[spec.name] = graph_manifest_entry(model, spec, out_dir, batch)
        if shared is not None:
            graphs[spec.name]["external_data"] = shared.path.name
    return graphs


def graph_manifest_entry(model: SDARModel, spec: GraphSpec, out_dir: Path, batch: int) -> dict:
    cfg = model.config
    n, kvh, D = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim
    dt = dtype_name(model.dtype_)
    T = spec.tokens if spec.tokens is not None else "new_tokens"
    inputs = {"input_ids": {"dtype": "int64", "shape": [batch, T]},
              "past_len": {"dtype": "int64", "shape": [1]}}
    if spec.logits_input:
        inputs["num_logits"] = {"dtype": "int64", "shape": [1]}
    outputs = {}
    if spec.logits:
        rows = "num_logits" if spec.logits_input else spec.logits
        outputs["logits"] = {"dtype": "float32", "shape": [batch, rows, cfg.vocab_size]}
    for i in range(n):
        for kind in ("key", "value"):
            inputs[f"past_{kind}_{i}"] = {"dtype": dt, "shape": ["past_seq", batch, kvh, D]}
            outputs[f"present_{kind}_{i}"] = {"dtype": dt, "shape": [T, batch, kvh, D]}
    e = {"file": spec.file, "tokens": spec.tokens, "logits": spec.logits,
         "inputs": inputs, "outputs": outputs}
    if spec.logits_input:
        # ONNX Runtime only (contrib ops, Concat-ed weights)
        e.update(logits="num_logits", engine="ort", serves=list(STEP_KINDS))
    elif spec.name == TRT_GRAPH:
        # TensorRT only: one plan, one optimization profile per kind (sdar_export.trt_build)
        e.update(engine="trt", serves=list(STEP_KINDS))
    unused = unused_inputs(out_dir / spec.file)
    if unused:
        e["unused_inputs"] = unused
    data = out_dir / (spec.file + ".data")
    if data.exists():
        e["external_data"] = data.name
    return e


def file_size(p: str | Path) -> int:
    return os.path.getsize(p)
