"""The exporter's bounded-memory parts, each against the plain in-memory way of doing the same:

* graphs traced from a skeleton without weights, their weights written tensor by tensor into one
  shared file, equal a plain ``torch.onnx.export`` of the network with its weights (nodes and
  initializer bytes);
* the layer-by-layer reference network equals ``SDARModel`` bit for bit;
* a graph run in ONNX Runtime as segments equals the same graph run in one session;
* the lazy checkpoint reader, the spilled quantization plan, chunked RTN, the AWQ source and the
  CPU engine's chunked packing equal their whole-tensor forms.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from sdar_export.checkpoint import CheckpointWeights, load_checkpoint
from sdar_export.make_checkpoint import make_checkpoint
from sdar_export.model import SDARModel, graph_skeleton
from sdar_export.onnx_export import (
    StepGraph,
    canonicalize_initializers,
    example_inputs,
    export_graph,
    graph_specs,
    input_names,
    output_names,
    restore_unused_inputs,
    rope_tables,
)
from sdar_export.weight_store import WeightStore

L = 4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return {"dense": make_checkpoint(root / "dense", seed=11),
            "tied": make_checkpoint(root / "tied", seed=12, tie_word_embeddings=True, dtype="bfloat16"),
            "moe": make_checkpoint(root / "moe", seed=13, moe=True, dtype="bfloat16", shards=2)}


# ------------------------------------------------------------------ graphs


def _plain_graph(model: SDARModel, spec, batch: int = 1):
    """One graph exported the plain way: the network with its weights through torch.onnx.export,
    then the same post-processing as the exporter (names, the step graph's ONNX Runtime rewrites)."""
    from sdar_export.ort_graph import fold_static_shapes, optimize_for_ort

    n = model.num_layers
    T = spec.tokens if spec.tokens is not None else 2 * L
    args = example_inputs(model, batch, T, P=2 * L + 1, past_len=L,
                          num_logits=spec.logits if spec.logits_input else None)
    dyn = {f"past_{k}_{i}": {0: "past_seq"} for i in range(n) for k in ("key", "value")}
    if spec.tokens is None:
        dyn["input_ids"] = {1: "new_tokens"}
        dyn.update({f"present_{k}_{i}": {0: "new_tokens"} for i in range(n) for k in ("key", "value")})
    if spec.logits_input:
        dyn["logits"] = {1: "num_logits"}
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(StepGraph(model, L, spec.logits, spec.logits_input).eval(), args, buf,
                          input_names=input_names(n, spec.logits_input),
                          output_names=output_names(n, spec.logits > 0),
                          dynamic_axes=dyn, opset_version=18, do_constant_folding=True, dynamo=False)
    m = onnx.load_from_string(buf.getvalue())
    restore_unused_inputs(m, input_names(n, spec.logits_input), model, batch,
                          dynamic_tokens=spec.tokens is None)
    canonicalize_initializers(m)
    if spec.logits_input:
        fold_static_shapes(m)
        optimize_for_ort(m, rope=rope_tables(model))
    return m


def _fold_head_transpose(m) -> int:
    """The tied head's Transpose(embedding table) as the transposed initializer it stands for."""
    from sdar_export.weight_store import array_name

    inits = {t.name: t for t in m.graph.initializer}
    heads = [n for n in m.graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    for n in heads:
        t = inits[n.input[0]]
        a = np.ascontiguousarray(numpy_helper.to_array(t).T)
        name = array_name(a, t.data_type)
        m.graph.initializer.append(numpy_helper.from_array(a, name))
        for other in m.graph.node:
            other.input[:] = [name if x == n.output[0] else x for x in other.input]
        m.graph.node.remove(n)
    return len(heads)


def _same_graph(a, b) -> None:
    """Same inputs, outputs, node sequence (ops, names, attributes) and initializers (names, bytes);
    values inside the graph may be named differently (the tracer numbers them), consistently."""
    assert [i.SerializeToString() for i in a.graph.input] == [i.SerializeToString() for i in b.graph.input]
    assert [o.SerializeToString() for o in a.graph.output] == [o.SerializeToString() for o in b.graph.output]
    ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert sorted(ia) == sorted(ib)
    for k in ia:
        assert (ia[k].dtype, ia[k].shape) == (ib[k].dtype, ib[k].shape), k
        assert ia[k].tobytes() == ib[k].tobytes(), k
    fixed = {i.name for i in a.graph.input} | {o.name for o in a.graph.output} | set(ia) | {""}
    rename: dict[str, str] = {}
    assert len(a.graph.node) == len(b.graph.node)
    for na, nb in zip(a.graph.node, b.graph.node, strict=True):
        assert (na.op_type, na.domain, na.name) == (nb.op_type, nb.domain, nb.name)
        assert [x.SerializeToString() for x in na.attribute] == [x.SerializeToString() for x in nb.attribute]
        assert [rename.get(x, x) for x in na.input] == list(nb.input), na.name
        for x, y in zip(na.output, nb.output, strict=True):
            if x in fixed:
                assert x == y
            else:
                rename[x] = y


@pytest.mark.parametrize("which,dtype", [("dense", "float32"), ("tied", "float16"), ("moe", "bfloat16")])
def test_skeleton_graphs_equal_a_plain_export_with_weights(checkpoints, tmp_path, which, dtype):
    from sdar_export.graph_weights import GraphWeights

    ck = load_checkpoint(checkpoints[which], dtype=dtype, with_weights="lazy")
    compute = "float32" if dtype == "bfloat16" else dtype
    skeleton, params = graph_skeleton(ck.config, dtype, compute)
    loaded = load_checkpoint(checkpoints[which], dtype=dtype).weights
    full = SDARModel(ck.config, loaded, dtype, compute).eval()
    folded = 0
    with WeightStore(tmp_path) as store:
        weights = GraphWeights(ck.weights, store)
        for spec in graph_specs(L):
            export_graph(skeleton, params.recipes_of(skeleton), spec, tmp_path / spec.file, L, weights)
    for spec in graph_specs(L):
        ours = onnx.load(str(tmp_path / spec.file))
        folded += _fold_head_transpose(ours)
        _same_graph(_plain_graph(full, spec), ours)
    assert folded == (4 if which == "tied" and dtype != "bfloat16" else 0)   # every graph with a head


def test_weight_store_names_by_content_and_stores_once(tmp_path):
    a = np.arange(600, dtype=np.float32).reshape(20, 30)
    with WeightStore(tmp_path) as store:
        t1 = store.add(1, a.shape, [a[:7].tobytes(), a[7:].tobytes()])
        size = store.bytes_written
        t2 = store.add(1, a.shape, [a.tobytes()])              # the same tensor again: rolled back
        assert t1.name == t2.name and store.bytes_written == size
        t3 = store.add(1, (30, 20), [a.tobytes()])             # same bytes, other shape: another tensor
        assert t3.name != t1.name
    offsets = [int(next(e.value for e in t.external_data if e.key == "offset")) for t in (t1, t3)]
    assert offsets[0] % 64 == 0 and offsets[1] % 64 == 0
    m = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [], [t1]))
    onnx.save_model(m, str(tmp_path / "g.onnx"))
    back = onnx.load(str(tmp_path / "g.onnx"))
    np.testing.assert_array_equal(numpy_helper.to_array(back.graph.initializer[0]), a)
    from sdar_export.weight_store import array_name
    assert t1.name == array_name(a, 1)


# ------------------------------------------------------------------ reference


@pytest.mark.parametrize("which,dtype", [("dense", "float32"), ("tied", "float16"), ("moe", "float32")])
def test_layer_by_layer_reference_equals_sdar_model(checkpoints, which, dtype):
    from sdar_export.reference import ModelReference, ReferenceNetwork
    from sdar_export.validate import graph_cases

    lazy = load_checkpoint(checkpoints[which], dtype=dtype, with_weights="lazy")
    model = SDARModel(lazy.config, load_checkpoint(checkpoints[which], dtype=dtype).weights, dtype).eval()
    cases = graph_cases("trt", L, None, L, 40) + graph_cases("step", "num_logits", None, L, 40)
    ours = ReferenceNetwork(lazy.weights, dtype, dtype, L, batch=2).run(cases)
    plain = ModelReference(model, L, batch=2).run(cases)
    for a, b in zip(ours, plain, strict=True):
        assert (a.logits is None) == (b.logits is None)
        for x, y in zip(a.named().values(), b.named().values(), strict=True):
            np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ segmented ONNX Runtime


@pytest.mark.parametrize("which,dtype", [("dense", "float32"), ("tied", "float16")])
def test_graph_in_segments_equals_one_session(checkpoints, tmp_path, which, dtype):
    """Cut into the smallest segments possible (each weight-reading node alone), the step and trt
    graphs compute what one session computes: in float32 to rounding. In float16 a cut stores its
    values in float16, as the graph declares them, where one session keeps its float32 copies
    (ONNX Runtime's CPU provider computes float16 graphs in float32 and drops the casts between):
    they then differ by float16 roundings, well inside the float16 validation tolerance."""
    from sdar_export import cli
    from sdar_export.ort_segments import SegmentedGraph
    from sdar_export.validate import TOLERANCES, case_feeds, graph_cases, session_options

    art = cli.export(checkpoints[which], tmp_path / "art", dtype=dtype, max_context=32, quiet=True,
                     skip_validate=True, cpu_engine=False)
    cfg = load_checkpoint(checkpoints[which], with_weights=False).config
    atol, rtol = (1e-5, 1e-6) if dtype == "float32" else TOLERANCES[dtype]
    for kind, nl, tokens in (("step", "num_logits", None), ("trt", L, None)):
        cases = graph_cases(kind, nl, tokens, L, 32)
        whole = SegmentedGraph(art / f"{kind}.onnx", 1 << 40, session_options(None, prepack=False))
        cut = SegmentedGraph(art / f"{kind}.onnx", 1, session_options(None, prepack=False))
        assert len(whole.segments) == 1 and len(cut.segments) > 20
        feeds = case_feeds(cfg, 1, dtype)
        for a, b in zip(whole.run(cases, feeds), cut.run(cases, feeds), strict=True):
            assert sorted(a) == sorted(b)
            for k in a:
                scale = float(np.abs(a[k]).max()) if a[k].size else 0.0
                assert float(np.abs(a[k] - b[k]).max(initial=0.0)) <= atol + rtol * scale, (kind, k)
    assert not list(art.glob(".segment_*"))


# ------------------------------------------------------------------ weight sources


def test_lazy_checkpoint_reader_equals_loading_all(checkpoints):
    for which in ("dense", "tied", "moe"):
        whole = load_checkpoint(checkpoints[which], dtype="float16")
        lazy = CheckpointWeights(checkpoints[which], whole.config, "float16")
        assert lazy.tied == (which == "tied")
        for name in lazy.names():
            assert torch.equal(lazy.get(name), whole.weights[name]), name
        ids = [5, 0, 5, 17]
        table = whole.weights["model.embed_tokens.weight"]
        assert torch.equal(lazy.rows("model.embed_tokens.weight", ids), table[ids])


def test_spilled_and_chunked_quantization_equal_in_memory(checkpoints, tmp_path, monkeypatch):
    from sdar_export import quantize as q
    from sdar_export.quantize import QTensor, SpilledTensors, make_scheme, quantize_source

    ck = load_checkpoint(checkpoints["tied"], dtype="float32", with_weights="lazy")
    scheme = make_scheme("int4", 32, symmetric=False, quantize_embeddings=True, quantize_lm_head=True)
    memory = quantize_source(ck.weights, ck.config, scheme, "float32")
    monkeypatch.setattr(q, "_RTN_CHUNK", 100)          # a few rows per pass
    spilled = quantize_source(ck.weights, ck.config, scheme, "float32", SpilledTensors(tmp_path / "q"))
    assert memory.graph_names == spilled.graph_names and sorted(memory.tensors) == sorted(spilled.tensors)
    for name in memory.tensors:
        a, b = memory.tensors[name], spilled.tensors[name]
        assert isinstance(b, QTensor)
        for x, y in ((a.q, b.q), (a.scale, b.scale), (a.zp, b.zp)):
            np.testing.assert_array_equal(x, y)
    assert memory.packed_bytes() == spilled.packed_bytes() > 0


def test_awq_source_equals_folded_weights(checkpoints):
    from sdar_export.awq import AwqScaled, GroupChoice, fold_scales

    whole = load_checkpoint(checkpoints["dense"], dtype="float16")
    lazy = CheckpointWeights(checkpoints["dense"], whole.config, "float16")
    rng = np.random.default_rng(0)
    H, Im = whole.config.hidden_size, whole.config.intermediate_size
    choices = [GroupChoice(0, "qkv", 0.5, rng.uniform(0.5, 2, H).astype(np.float32), [1.0]),
               GroupChoice(0, "gate_up", 0.5, rng.uniform(0.5, 2, H).astype(np.float32), [1.0]),
               GroupChoice(1, "down", 0.5, rng.uniform(0.5, 2, Im).astype(np.float32), [1.0])]
    folded = fold_scales(whole.weights, choices)
    scaled = AwqScaled(lazy, choices)
    for name in lazy.names():
        assert torch.equal(scaled.get(name), folded[name]), name


def test_awq_calibration_from_a_source_equals_from_a_dict(checkpoints):
    from sdar_export.awq import calibrate
    from sdar_export.quantize import make_scheme

    whole = load_checkpoint(checkpoints["dense"], dtype="float32")
    lazy = CheckpointWeights(checkpoints["dense"], whole.config, "float32")
    prompts = [[7, 8, 9, 10, 11], [12, 13, 14]]
    scheme = make_scheme("int4", 32)
    a = calibrate(whole.weights, whole.config, prompts, scheme, "float32", L, whole.mask_id)
    b = calibrate(lazy, whole.config, prompts, scheme, "float32", L, whole.mask_id)
    assert [(c.layer, c.group, c.alpha) for c in a] == [(c.layer, c.group, c.alpha) for c in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.scale, y.scale)


def test_cpu_engine_float_matrix_packed_in_pieces_equals_whole(monkeypatch, tmp_path):
    from sdar_export import cpu_weights
    from sdar_export.cpu_pack import pack_f32

    w = np.random.default_rng(1).standard_normal((70, 48)).astype(np.float32)
    monkeypatch.setattr(cpu_weights, "_F32_BLOCK_ROWS", 16)
    with open(tmp_path / "f.bin", "wb") as f:
        writer = cpu_weights._Writer(f)
        entry = cpu_weights._f32_entry(writer, w)
    at, n = entry["data"]
    got = np.frombuffer((tmp_path / "f.bin").read_bytes()[at:at + n], np.float32)
    np.testing.assert_array_equal(got, pack_f32(w).data.reshape(-1))


def test_bench_export_reports_every_stage(tmp_path, capsys):
    """``python -m sdar_export.bench_export``: each stage with its time and peak memory, and the
    artifact's size against the weights it stores (here the tiny preset, float32)."""
    import json

    from sdar_export.bench_export import main

    out = tmp_path / "bench.json"
    argv = ["--preset", "tiny", "--workdir", str(tmp_path), "--max-context", "64", "--json", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    names = [s["stage"] for s in res["stages"]]
    assert names[:4] == ["load checkpoint", "build network", "export ONNX graphs",
                         "validate with ONNX Runtime"]
    peaks = [s["peak_rss"] for s in res["stages"]]
    for s in res["stages"]:
        assert s["seconds"] >= 0 and s["peak_rss"] >= max(s["rss_before"], s["rss_after"]) > 0
    assert res["peak_rss_gib"] == round(max(peaks) / 2**30, 2)
    # the graph files and the rope tables are a tenth of so small a model (the ratio at real sizes is
    # test_export_memory's)
    assert 1.0 <= res["graphs_and_weights_vs_weights"] <= 1.5
    assert "export ONNX graphs" in capsys.readouterr().err
