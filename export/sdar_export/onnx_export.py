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
  bfloat16 - K/V cache and embedding table stored bf16, matmuls in float32 (a Cast after each
             cache read; the weights' casts are folded, so the matmul weights are stored float32):
             ONNX Runtime CPU has no bf16 kernel for MatMul, Add, Mul, Where, Softmax, so a
             bf16-compute graph could not be validated (or run) on CPU. TensorRT with the bf16
             flag may still lower the fp32 matmuls.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import ExportError
from .graph_weights import GraphWeights, onnx_type, pending_quantized
from .model import SDARModel, dtype_name


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


class _ProductsUncomputed(TorchDispatchMode):
    """Matrix products return uninitialized tensors of the right shape instead of being computed.

    The tracer records each op before it reaches this mode, so the graph is the same; only the
    values differ, and a skeleton's values mean nothing (its weights are placeholders). The products
    are the whole cost of a trace: torch's CPU half-precision GEMM ran at ~0.2 GFLOP/s here (0.5 s
    for one 8 x 2048 x 6144 product), which made tracing one 1.7B float16 graph take ~40 s.
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.mm.default:
            return torch.empty((args[0].shape[0], args[1].shape[1]), dtype=args[0].dtype)
        if func is torch.ops.aten.bmm.default:
            a, b = args
            return torch.empty((a.shape[0], a.shape[1], b.shape[2]), dtype=a.dtype)
        return func(*args, **(kwargs or {}))


class StepGraph(torch.nn.Module):
    """Flat-argument wrapper of SDARModel for one graph kind (what gets traced).

    ``weights_as_inputs()``: the network's parameters become arguments after the step's own (a
    skeleton's trace, see :func:`trace_graph`), and the matrix products are not computed
    (:class:`_ProductsUncomputed`)."""

    def __init__(self, model: SDARModel, block_length: int, num_logits: int, logits_input: bool = False):
        super().__init__()
        self.model, self.L, self.NL = model, block_length, num_logits
        self.logits_input = logits_input
        self.n = model.num_layers
        self.slots: list[tuple[torch.nn.Module, str]] = []

    @contextlib.contextmanager
    def weights_as_inputs(self):
        """Within: no registered parameters (the exporter sees none); ``forward`` takes them as its
        last arguments, in the order of the yielded {name: placeholder} dict."""
        params = dict(self.named_parameters())
        self.slots = []
        for name in params:
            path, attr = name.rsplit(".", 1)
            module = self.get_submodule(path)
            self.slots.append((module, attr))
            del module._parameters[attr]
        try:
            yield params
        finally:
            for (module, attr), p in zip(self.slots, params.values(), strict=True):
                module.__dict__.pop(attr, None)
                module._parameters[attr] = p
            self.slots = []

    def forward(self, input_ids, past_len, *rest):
        if not self.slots:
            return self._step(input_ids, past_len, *rest)
        n = len(self.slots)
        for (module, attr), value in zip(self.slots, rest[-n:], strict=True):
            module.__dict__[attr] = value     # a plain attribute: what the module's code reads
        with _ProductsUncomputed():   # only around the forward: the exporter's own passes compute
            return self._step(input_ids, past_len, *rest[:-n])

    def _step(self, input_ids, past_len, *rest):
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


def trace_graph(model: SDARModel, spec: GraphSpec, block_length: int, batch: int = 1, opset: int = 18):
    """Trace one step graph of a graph skeleton (sdar_export.model) without its weights: the
    parameters are graph inputs under their names in the StepGraph (``model.<module path>``).
    Returns the ModelProto."""
    import io

    import onnx

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
    step = StepGraph(model, L, spec.logits, spec.logits_input).eval()
    buf = io.BytesIO()
    # The weights as inputs, not parameters: the exporter then holds no weight values at all (as
    # parameters, each would be copied whole into its shape inference: 2.5 GB at a time for a 1.7B
    # model's float32 vocabulary table).
    with torch.no_grad(), warnings.catch_warnings(), step.weights_as_inputs() as params:
        warnings.simplefilter("ignore")
        torch.onnx.export(step, (*args, *params.values()), buf, input_names=in_names + list(params),
                          output_names=out_names, dynamic_axes=dyn, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    m = onnx.load_from_string(buf.getvalue())
    m.producer_name = "sdar_export"
    return m


def export_graph(model: SDARModel, recipes: dict, spec: GraphSpec, path: str | Path, block_length: int,
                 weights: GraphWeights, batch: int = 1, opset: int = 18, rewrite=None) -> Path:
    """Trace, bind and write one step graph; its weights go to (or already are in) the shared file.

    ``recipes``: the skeleton's parameter name -> :class:`sdar_export.model.GraphWeight`.
    ``rewrite(model_proto, graph_name)``, when given, edits the graph after its initializers got
    their canonical names and before it is saved (weight quantization, sdar_export.quantize).
    """
    import onnx

    path = Path(path)
    m = trace_graph(model, spec, block_length, batch, opset)
    weights.bind(m, {"model." + k: v for k, v in recipes.items()})
    restore_unused_inputs(m, input_names(model.num_layers, spec.logits_input), model, batch,
                          dynamic_tokens=spec.tokens is None)
    canonicalize_initializers(m)
    if spec.logits_input:
        from .ort_graph import fold_static_shapes  # noqa: PLC0415
        fold_static_shapes(m)   # before the quantization rewrite: shape inference needs standard ops
    if rewrite is not None:
        rewrite(m, spec.name)
    if spec.logits_input:
        from .ort_graph import optimize_for_ort  # noqa: PLC0415
        optimize_for_ort(m, rope=rope_tables(model))
    left = pending_quantized(m)
    if left:
        raise ExportError(f"quantization: {len(left)} quantized weights of the {spec.name} graph were not "
                          "replaced by their quantized form (exporter bug)")
    weights.store.externalize(m)
    onnx.save_model(m, str(path))
    return path


def rope_tables(model: SDARModel) -> tuple:
    """cos / sin [max_position_embeddings, head_dim / 2] float32 of every position, computed as
    SDARModel.forward does (float position * inv_freq): the step graph's RotaryEmbedding reads them."""
    pos = torch.arange(model.config.max_position_embeddings, dtype=torch.int64).float()
    freqs = pos.unsqueeze(-1) * model.inv_freq.unsqueeze(0)
    return freqs.cos().numpy(), freqs.sin().numpy()


def canonicalize_initializers(m) -> None:
    """Rename every in-graph initializer to ``w_<sha256 of dtype, shape, bytes>`` (identical tensors
    merged); initializers in the shared weights file already carry that name.

    The same weight then has the same name in every graph, so they share one external data file
    (one copy on disk). In memory, ONNX Runtime prepacks matmul weights per session (a copy each,
    and ``session.disable_prepacking`` makes 4-token matmuls ~2.7x slower on CPU), so the engine
    runs every kind on the one ``step`` graph instead of sharing initializers between sessions.
    """
    from onnx import numpy_helper

    from .weight_store import content_name, is_external  # noqa: PLC0415

    rename: dict[str, str] = {}
    keep = []
    seen: set[str] = set()
    for t in m.graph.initializer:
        if is_external(t):
            new = t.name
        else:
            if not t.raw_data:  # typed-field storage: normalise to raw bytes
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
            new = content_name(t.data_type, t.dims, [t.raw_data])
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
    elem = onnx_type(model.dtype_)
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


def graph_file_facts(path: str | Path) -> tuple[list[str], str | None]:
    """(graph inputs no node reads, the external data file its weights are in or None), read from
    the graph file without its weights."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in m.graph.initializer for e in t.external_data if e.key == "location"}
    used = set()
    def walk(g):
        for node in g.node:
            used.update(node.input)
            for a in node.attribute:
                if a.g is not None and a.g.node:
                    walk(a.g)
    walk(m.graph)
    return [i.name for i in m.graph.input if i.name not in used], (min(locations) if locations else None)


def export_all(model: SDARModel, recipes: dict, out_dir: str | Path, block_length: int, weights: GraphWeights,
               batch: int = 1, opset: int = 18, progress=None, rewrite=None, step: bool = True,
               trt: bool = True) -> dict[str, dict]:
    """Export prefill/decode/fused (and the TensorRT and ONNX Runtime graphs) of a graph skeleton into
    out_dir, every graph reading the one weights file of ``weights``. Returns the manifest ``graphs``
    section."""
    out_dir = Path(out_dir)
    graphs = {}
    for spec in graph_specs(block_length, step=step, trt=trt):
        if progress:
            progress(f"exporting {spec.file}")
        export_graph(model, recipes, spec, out_dir / spec.file, block_length, weights, batch=batch,
                     opset=opset, rewrite=rewrite)
        graphs[spec.name] = graph_manifest_entry(model, spec, out_dir, batch)
    return graphs


def export_artifact_graphs(skeleton, network, plan, directory: Path, opts, progress=None):
    """Every graph of the artifact, traced from ``skeleton`` (sdar_export.model.graph_skeleton), all
    reading one weights file written from ``network`` (a weight source) and the quantization
    ``plan``; ``opts``: sdar_export.options.ExportOptions. Returns (the manifest's graphs section, the
    quantized node counts per graph)."""
    from .quantize import make_rewriter  # noqa: PLC0415
    from .weight_store import WeightStore  # noqa: PLC0415

    model, params = skeleton
    counts: dict = {}
    with WeightStore(directory) as store:
        weights = GraphWeights(network, store, plan.graph_names if plan is not None else None)
        rewrite = make_rewriter(plan, opts.dtype, counts, store) if plan is not None else None
        # TensorRT's graph, unless the weights are in a form only ONNX Runtime runs (MatMulNBits)
        for_trt = plan is None or plan.scheme.format == "QDQ"
        graphs = export_all(model, params.recipes_of(model), directory, opts.block_length, weights,
                            batch=opts.batch, opset=opts.opset, progress=progress, rewrite=rewrite,
                            trt=for_trt)
    return graphs, counts


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
    unused, external = graph_file_facts(out_dir / spec.file)
    if unused:
        e["unused_inputs"] = unused
    if external:
        e["external_data"] = external
    return e


def file_size(p: str | Path) -> int:
    return os.path.getsize(p)
