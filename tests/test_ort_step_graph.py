"""The ONNX Runtime step graph (``step.onnx``): one graph, one session, every step kind.

Checks the graph's own I/O (dynamic T, ``num_logits`` rows, 0 in prefill), its ORT-only rewrites
(q/k/v and gate/up fused through a Concat of the shared weights; the standard graphs keep standard
ops for TensorRT), and that the engine running every kind on it gives the tokens of the three-graph
engine.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sdar_fixtures import tiny_artifact

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def three_graph_art(art, tmp_path_factory):
    """The same artifact with the step graph left out of the manifest (the engine's fallback)."""
    _, src = art
    dst = tmp_path_factory.mktemp("nostep") / "art"
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    del m["graphs"]["step"]
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def _ops(path) -> Counter:
    m = onnx.load(str(path), load_external_data=False)
    return Counter((n.domain or "ai.onnx", n.op_type) for n in m.graph.node)


def test_step_graph_fuses_projections_and_standard_graphs_stay_standard(art):
    _, a = art
    step = _ops(a / "step.onnx")
    decode = _ops(a / "decode.onnx")
    layers = 2
    # q/k/v and gate/up: 2 fused matmuls per layer instead of 5; the products with the new K/V are
    # FusedMatMuls reading the presents
    products = step[("ai.onnx", "MatMul")] + step[("com.microsoft", "FusedMatMul")]
    assert decode[("ai.onnx", "MatMul")] - products == 3 * layers
    assert step[("com.microsoft", "FusedMatMul")] == 2 * layers
    assert step[("ai.onnx", "Split")] >= 2 * layers
    for g in ("prefill", "decode", "fused"):
        assert {d for d, _ in _ops(a / f"{g}.onnx")} == {"ai.onnx"}, g


def test_step_graph_folds_static_shapes(art):
    """Shape arithmetic of the static axes (batch, heads, head_dim) is constant in the step graph:
    Reshape targets are initializers unless two token axes are dynamic, and the rotate_half slice
    bounds are constants: fewer Shape / Unsqueeze nodes are left than in prefill (also dynamic in T,
    same layers, and it has no LM head)."""
    _, a = art
    m = onnx.load(str(a / "step.onnx"), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    layers = 2
    reshapes = [n for n in m.graph.node if n.op_type == "Reshape" and "/layers." in n.name]
    computed = [n.name for n in reshapes if n.input[1] not in inits]
    assert len(computed) <= 2 * layers, computed     # the scores' [.., T, P + T] views
    step, prefill = _ops(a / "step.onnx"), _ops(a / "prefill.onnx")
    assert step[("ai.onnx", "Shape")] <= 2 < prefill[("ai.onnx", "Shape")]
    assert step[("ai.onnx", "Unsqueeze")] < prefill[("ai.onnx", "Unsqueeze")] * 2 / 3


def test_step_graph_reads_dynamic_dims_once(art):
    """T and P are read from the graph inputs (input_ids, past_key_0) once, not through a Shape of
    each layer's own tensors: no layer holds shape plumbing, and the identity Casts the trace writes
    (``.float()`` of float32 values, the logits' among them) are gone."""
    _, a = art
    m = onnx.load(str(a / "step.onnx"), load_external_data=False)
    shapes = [n for n in m.graph.node if n.op_type == "Shape"]
    assert sorted(n.input[0] for n in shapes) == ["input_ids", "past_key_0"]
    plumbing = {"Shape", "Gather", "Unsqueeze", "Cast"}
    # what is left is one copy, under the first layer's names (where the trace first built it)
    repeated = [n.name for n in m.graph.node if "/layers." in n.name and "/layers.0/" not in n.name
                and n.op_type in plumbing]
    assert repeated == []
    producer = {o: n for n in m.graph.node for o in n.output}
    assert producer["logits"].op_type == "MatMul"
    assert _ops(a / "step.onnx")[("ai.onnx", "Cast")] < _ops(a / "decode.onnx")[("ai.onnx", "Cast")]


def test_step_graph_rope_is_one_rotary_embedding_per_tensor(art):
    """q and k of every layer: com.microsoft.RotaryEmbedding at offset past_len over cos / sin
    tables of every position (the traced Slice / Neg / Concat / Mul / Add are gone); the standard
    graphs keep the traced form."""
    _, a = art
    m = onnx.load(str(a / "step.onnx"), load_external_data=False)
    rotary = [n for n in m.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rotary) == 2 * 2 and {n.domain for n in rotary} == {"com.microsoft"}
    assert {n.input[1] for n in rotary} == {"past_len"}
    assert _ops(a / "step.onnx")[("ai.onnx", "Neg")] == 0 < _ops(a / "decode.onnx")[("ai.onnx", "Neg")]
    inits = {t.name: t for t in m.graph.initializer}
    cfg = json.loads((a / "config.json").read_text())
    D = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    assert list(inits[rotary[0].input[2]].dims) == [cfg["max_position_embeddings"], D // 2]


def test_step_graph_serves_prefill_decode_fused(art):
    torch = pytest.importorskip("torch")
    from sdar_export.model import build_model, full_sequence_logits

    ck, a = art
    L, V, n = 4, 512, 2
    model = build_model(ck, dtype="float32")
    s = ort.InferenceSession(str(a / "step.onnx"), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, V, (1, 4 * L), generator=torch.Generator().manual_seed(1))
    full = full_sequence_logits(model, ids, L).numpy()
    cache = {f"past_{kv}_{i}": np.zeros((64, 1, 2, 32), np.float32)
             for i in range(n) for kv in ("key", "value")}
    names = [o.name for o in s.get_outputs()]

    def step(start, T, nl):
        feeds = {"input_ids": ids[:, start:start + T].numpy(), "past_len": np.array([start], np.int64),
                 "num_logits": np.array([nl], np.int64)}
        feeds.update({k: c[:start] for k, c in cache.items()})
        res = dict(zip(names, s.run(None, feeds), strict=True))
        for k, c in cache.items():
            c[start:start + T] = res[k.replace("past", "present")]
        return res["logits"]

    assert step(0, 2 * L, 0).shape == (1, 0, V)                  # prefill: no LM head rows
    np.testing.assert_allclose(step(2 * L, L, L), full[:, 2 * L:3 * L], atol=1e-4)     # decode
    np.testing.assert_allclose(step(2 * L, 2 * L, L), full[:, 3 * L:4 * L], atol=1e-4)  # fused


def test_engine_runs_every_kind_on_one_session(art):
    from sdar_rt import Generator, _core

    _, a = art
    gen = Generator(a, engine="ort", threads=1)
    graphs = gen.engine._graphs
    assert gen.engine.shared_session and gen.engine.has_fused
    assert set(graphs) == {_core.GraphKind.Prefill, _core.GraphKind.Decode, _core.GraphKind.Fused}
    assert len({id(g.session) for g in graphs.values()}) == 1
    assert [int(graphs[k].num_logits[0]) for k in (_core.GraphKind.Prefill, _core.GraphKind.Decode)] == [0, 4]


@pytest.mark.parametrize("fused", [True, False])
def test_step_graph_tokens_equal_three_graph_engine(art, three_graph_art, fused):
    from sdar_rt import Generator

    _, a = art
    one, three = Generator(a, engine="ort", threads=1), Generator(three_graph_art, engine="ort", threads=1)
    assert one.engine.shared_session and not three.engine.shared_session
    prompts = [[5, 9, 11, 3, 7, 2, 8, 1, 4], [3, 4]]
    kw = dict(max_new_tokens=21, remasking="low_confidence_static", denoising_steps=2, fused_commit=fused)
    for p in prompts:
        x = one.generate_ids([p], **kw)[0]
        y = three.generate_ids([p], **kw)[0]
        assert x.token_ids == y.token_ids and len(x.token_ids) > 0
        assert x.stats["nfe_prefill"] == y.stats["nfe_prefill"]


def _graph(nodes, inputs, outputs):
    from onnx import TensorProto, helper

    f = TensorProto.FLOAT
    return helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(x, f, [2, 3]) for x in inputs],
        [helper.make_tensor_value_info(y, f, None) for y in outputs]))


def test_common_subexpressions_merge_link_by_link_and_keep_graph_outputs():
    from onnx import helper
    from sdar_export.ort_graph import eliminate_common_subexpressions

    mk = helper.make_node
    m = _graph([mk("Relu", ["x"], ["a1"]), mk("Relu", ["x"], ["a2"]),          # same op, same input
                mk("Neg", ["a1"], ["b1"]), mk("Neg", ["a2"], ["b2"]),          # equal once a2 -> a1
                mk("Softmax", ["x"], ["s1"], axis=0), mk("Softmax", ["x"], ["s2"], axis=1),
                mk("Add", ["b1", "b2"], ["y"]), mk("Relu", ["x"], ["out2"])],
               ["x"], ["y", "out2", "s1", "s2"])
    before = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    want = before.run(None, {"x": x})
    assert eliminate_common_subexpressions(m) == 2          # a2 and b2; out2 is a graph output
    assert [n.output[0] for n in m.graph.node] == ["a1", "b1", "s1", "s2", "y", "out2"]
    assert list(m.graph.node[4].input) == ["b1", "b1"]
    after = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    for got, exp in zip(after.run(None, {"x": x}), want, strict=True):
        np.testing.assert_array_equal(got, exp)


def test_identity_casts_are_dropped_and_real_casts_kept():
    from onnx import TensorProto, helper
    from sdar_export.ort_graph import drop_identity_casts

    mk, f = helper.make_node, TensorProto.FLOAT
    m = _graph([mk("Relu", ["x"], ["r"]), mk("Cast", ["r"], ["c"], to=f), mk("Neg", ["c"], ["n"]),
                mk("Cast", ["n"], ["logits"], to=f),                  # writes a graph output
                mk("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), mk("Cast", ["h"], ["back"], to=f)],
               ["x"], ["logits", "back"])
    types = {"x": f, "r": f, "c": f, "n": f, "h": TensorProto.FLOAT16}
    assert drop_identity_casts(m, types) == 2
    assert [(n.op_type, list(n.input), list(n.output)) for n in m.graph.node] == [
        ("Relu", ["x"], ["r"]), ("Neg", ["r"], ["logits"]),           # Neg now writes the output
        ("Cast", ["x"], ["h"]), ("Cast", ["h"], ["back"])]


def test_identity_cast_chain_into_a_graph_output_keeps_the_output_produced():
    """Relu -> Cast(float) -> Cast(float) -> graph output: both Casts go and the Relu writes the output
    (the second Cast reads the first's input by then, whose only reader it has become)."""
    from onnx import TensorProto, helper
    from sdar_export.ort_graph import drop_identity_casts

    mk, f = helper.make_node, TensorProto.FLOAT
    m = _graph([mk("Relu", ["x"], ["r"]), mk("Cast", ["r"], ["c"], to=f), mk("Cast", ["c"], ["y"], to=f)],
               ["x"], ["y"])
    x = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert drop_identity_casts(m, {"x": f, "r": f, "c": f}) == 2
    assert [(n.op_type, list(n.input), list(n.output)) for n in m.graph.node] == [("Relu", ["x"], ["y"])]
    got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(got[0], want[0])


# --------------------------------------------------------------------------- norm / scale fusions


def test_step_graph_norms_are_fused_contrib_ops(art):
    """Every RMSNorm is one SimplifiedLayerNormalization, and every residual Add feeding one is folded
    into a SkipSimplifiedLayerNormalization (the first layer's input norm reads the embeddings, the
    final norm reads the selected rows: those two stay plain); no Pow / ReduceMean / Sqrt chain is
    left, the attention scale is in the q_norm weight, and no Reshape feeds only another Reshape."""
    _, a = art
    ops = _ops(a / "step.onnx")
    layers = 2
    assert ops[("com.microsoft", "SkipSimplifiedLayerNormalization")] == 2 * layers - 1
    assert ops[("ai.onnx", "SimplifiedLayerNormalization")] == 2 + 2 * layers      # + q_norm, k_norm
    for gone in ("Pow", "ReduceMean", "Sqrt", "Div"):
        assert ops[("ai.onnx", gone)] <= 1, gone      # the block-index Div of the mask is global
    assert _ops(a / "decode.onnx")[("ai.onnx", "Pow")] == 4 * layers + 1       # standard graphs unchanged
    m = onnx.load(str(a / "step.onnx"), load_external_data=False)
    floats = {t.name for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    floats |= {n.output[0] for n in m.graph.node
               if n.op_type == "Constant" and n.attribute[0].t.data_type == onnx.TensorProto.FLOAT}
    layer_muls = [n for n in m.graph.node if n.op_type == "Mul" and "/layers." in n.name]
    assert len([n for n in layer_muls if "/mlp/" in n.name]) == 2 * layers     # SiLU and gate * up
    assert not [n.name for n in layer_muls if set(n.input) & floats]       # no scale left on q
    producer = {o: n for n in m.graph.node for o in n.output}
    readers = Counter(x for n in m.graph.node for x in n.input)
    chains = [n.name for n in m.graph.node if n.op_type == "Reshape" and n.input[0] in producer
              and producer[n.input[0]].op_type == "Reshape" and readers[n.input[0]] == 1]
    assert chains == []


def _rotary_graph(with_scale: float | None):
    """x [1, T, 2, 8] -> SLN(gamma) -> Reshape [1, T, 16] -> RotaryEmbedding -> Reshape [1, T, 2, 8]
    (-> Mul(scale)) -> Reshape [1, T, 2, 2, 4]: the q path of the step graph in miniature."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    mk = helper.make_node
    angles = np.outer(np.arange(64), [1.0, 0.3, 0.1, 0.03])
    inits = [numpy_helper.from_array((1 + 0.3 * rng.standard_normal(8)).astype(np.float32), "gamma"),
             numpy_helper.from_array(np.array([1, 0, -1], np.int64), "flat"),
             numpy_helper.from_array(np.array([1, 0, 2, 8], np.int64), "heads"),
             numpy_helper.from_array(np.array([1, 0, 2, 2, 4], np.int64), "split"),
             numpy_helper.from_array(np.cos(angles).astype(np.float32), "cos"),
             numpy_helper.from_array(np.sin(angles).astype(np.float32), "sin")]
    nodes = [mk("SimplifiedLayerNormalization", ["x", "gamma"], ["n"], epsilon=1e-6, axis=-1),
             mk("Reshape", ["n", "flat"], ["f"]),
             mk("RotaryEmbedding", ["f", "pos", "cos", "sin"], ["r"], domain="com.microsoft"),
             mk("Reshape", ["r", "heads"], ["h"])]
    last = "h"
    if with_scale is not None:
        inits.append(numpy_helper.from_array(np.array(with_scale, np.float32), "scale"))
        nodes.append(mk("Mul", ["h", "scale"], ["s"]))
        last = "s"
    nodes.append(mk("Reshape", [last, "split"], ["y"]))
    g = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", 2, 8]),
                                       helper.make_tensor_value_info("pos", TensorProto.INT64, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(g, opset_imports=opsets)


def _run(m, feeds):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, feeds)[0]


def test_fold_attention_scale_matches_ort_and_removes_the_mul():
    from sdar_export.ort_fusions import fold_attention_scale

    m = _rotary_graph(1 / np.sqrt(8))
    feeds = {"x": np.random.default_rng(4).standard_normal((1, 5, 2, 8)).astype(np.float32),
             "pos": np.array([7], np.int64)}
    want = _run(m, feeds)
    assert fold_attention_scale(m) == 1
    assert [n.op_type for n in m.graph.node].count("Mul") == 0
    got = _run(m, feeds)
    # one float32 rounding of gamma * scale instead of a rounding of the product: a few ulp
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert fold_attention_scale(m) == 0                       # nothing left to fold


def test_fold_attention_scale_leaves_a_shared_norm_output_alone():
    """The scale may only move into gamma when nothing else reads the norm's output."""
    from onnx import helper
    from sdar_export.ort_fusions import fold_attention_scale

    m = _rotary_graph(0.5)
    m.graph.node.append(helper.make_node("Identity", ["n"], ["n_copy"]))
    m.graph.output.append(helper.make_tensor_value_info("n_copy", 1, None))
    assert fold_attention_scale(m) == 0
    assert [n.op_type for n in m.graph.node].count("Mul") == 1


@pytest.mark.parametrize("inner,outer,collapses", [
    ([1, 0, 16], [1, 0, 2, 8], True),          # copied dim copied again: stays 0
    ([2, 0, 8], [0, 0, 2, 4], True),           # outer copies a dim the inner one set: becomes 2
    ([1, -1, 16], [1, 0, 4, 4], False),        # outer copies a dim the inner one inferred
])
def test_collapse_reshape_chains_matches_ort(inner, outer, collapses):
    from onnx import TensorProto, helper, numpy_helper
    from sdar_export.ort_fusions import collapse_reshape_chains

    x = np.random.default_rng(5).standard_normal((1, 3, 2, 8) if inner[0] == 1 else (2, 3, 4, 2)).astype(
        np.float32)
    g = helper.make_graph(
        [helper.make_node("Reshape", ["x", "s1"], ["a"]), helper.make_node("Reshape", ["a", "s2"], ["y"])],
        "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array(inner, np.int64), "s1"),
                     numpy_helper.from_array(np.array(outer, np.int64), "s2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    want = _run(m, {"x": x})
    assert collapse_reshape_chains(m) == int(collapses)
    if collapses:
        assert m.graph.node[1].input[0] == "x"
        from sdar_export.ort_graph import _drop_dead
        _drop_dead(m)
        assert len(m.graph.node) == 1
    got = _run(m, {"x": x})
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- tokens vs the previous graph


def _previous_step_graph_export(monkeypatch, ck, out, batch):
    """The artifact as exported before the norm / scale / reshape passes (they become no-ops)."""
    import sdar_export.ort_fusions as fusions
    from sdar_export.cli import export

    with monkeypatch.context() as mp:
        mp.setattr(fusions, "fuse_norms", lambda m: {})
        mp.setattr(fusions, "fold_attention_scale", lambda m: 0)
        mp.setattr(fusions, "collapse_reshape_chains", lambda m: 0)
        return export(ck, out, max_context=128, batch=batch, quiet=True, skip_validate=True)


TRAINED = Path(__file__).resolve().parents[1] / "python" / "sdar_rt" / "checkpoints" / "tiny"


@pytest.mark.parametrize("checkpoint", ["shipped", "random"])
def test_leaner_step_graph_gives_the_previous_graphs_tokens(checkpoint, tmp_path, monkeypatch):
    """Greedy tokens of the new step graph equal the previous one's for every remasking policy, fused
    and separate commit, batch 2 (two prompts in one forward)."""
    pytest.importorskip("torch")
    from sdar_export.cli import export
    from sdar_export.make_checkpoint import make_checkpoint
    from sdar_rt import Generator
    from sdar_rt.generator import REMASKING_POLICIES

    ck = TRAINED if checkpoint == "shipped" else make_checkpoint(tmp_path / "ck", preset="tiny", seed=3)
    new = export(ck, tmp_path / "new", max_context=128, batch=2, quiet=True, skip_validate=True)
    old = _previous_step_graph_export(monkeypatch, ck, tmp_path / "old", batch=2)
    assert (_ops(new / "step.onnx")[("com.microsoft", "SkipSimplifiedLayerNormalization")] > 0
            == _ops(old / "step.onnx")[("com.microsoft", "SkipSimplifiedLayerNormalization")])
    a, b = Generator(new, threads=1), Generator(old, threads=1)
    prompts = [[5, 9, 11, 3, 7, 2, 8, 1, 4], [6, 4, 12]]
    for policy in REMASKING_POLICIES:
        for fused in (True, False):
            kw = dict(max_new_tokens=16, remasking=policy, denoising_steps=2, fused_commit=fused)
            x, y = a.generate_ids(prompts, **kw), b.generate_ids(prompts, **kw)
            for p, q in zip(x, y, strict=True):
                assert p.token_ids == q.token_ids and len(p.token_ids) > 0, (policy, fused)
                assert p.stats["nfe_denoise"] == q.stats["nfe_denoise"], (policy, fused)


def test_int8_export_validates_the_leaner_step_graph(tmp_path):
    """Per-channel int8 (MatMulNBits, 8 bits): exact validation of every graph, the step graph included."""
    pytest.importorskip("torch")
    from sdar_export.cli import export
    from sdar_export.make_checkpoint import make_checkpoint

    ck = make_checkpoint(tmp_path / "ck", preset="tiny", seed=2)
    art = export(ck, tmp_path / "art", max_context=32, quantize="int8", quiet=True)
    q = json.loads((art / "manifest.json").read_text())["quantization"]
    assert set(q["validation"]["exact_max_abs"]) == {"prefill", "decode", "fused", "step"}
    for g, err in q["validation"]["exact_max_abs"].items():
        assert err < 1e-4, (g, err)
    ops = _ops(art / "step.onnx")
    assert ops[("com.microsoft", "SkipSimplifiedLayerNormalization")] == 3
    # per layer: the 2 products with the past (ONNX Runtime folds their Transposes when it loads the
    # graph) and 2 FusedMatMuls with the new K/V; + the float head; every weight product is MatMulNBits
    assert ops[("ai.onnx", "MatMul")] == 2 * 2 + 1 and ops[("com.microsoft", "FusedMatMul")] == 2 * 2
    assert ops[("com.microsoft", "MatMulNBits")] == 4 * 2


def test_new_kv_products_read_the_present_outputs_in_place():
    """MatMul(q, Transpose(k, (0,2,3,1))) and MatMul(p, Transpose(v, (0,2,1,3))) next to the
    present = Transpose(., (1,0,2,3)) outputs become FusedMatMuls reading the presents (cache layout),
    with outputs equal to the original graph's."""
    from onnx import TensorProto, helper
    from sdar_export.ort_fusions import read_new_kv_like_past
    from sdar_export.ort_graph import _drop_dead

    mk, f = helper.make_node, TensorProto.FLOAT
    B, T, H, D, G = 1, 4, 2, 8, 2
    nodes = [mk("Transpose", ["k"], ["present_key_0"], perm=[1, 0, 2, 3]),
             mk("Transpose", ["v"], ["present_value_0"], perm=[1, 0, 2, 3]),
             mk("Transpose", ["k"], ["kt"], perm=[0, 2, 3, 1]),
             mk("Transpose", ["v"], ["vt"], perm=[0, 2, 1, 3]),
             mk("MatMul", ["q", "kt"], ["scores"]),
             mk("MatMul", ["p", "vt"], ["out"])]
    g = helper.make_graph(nodes, "attn", [helper.make_tensor_value_info("q", f, [B, H, G * T, D]),
                                          helper.make_tensor_value_info("p", f, [B, H, G * T, T]),
                                          helper.make_tensor_value_info("k", f, [B, T, H, D]),
                                          helper.make_tensor_value_info("v", f, [B, T, H, D])],
                          [helper.make_tensor_value_info(n, f, None)
                           for n in ("scores", "out", "present_key_0", "present_value_0")])
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    m = helper.make_model(g, opset_imports=opsets)
    rng = np.random.default_rng(6)
    feeds = {"q": rng.standard_normal((B, H, G * T, D)), "p": rng.standard_normal((B, H, G * T, T)),
             "k": rng.standard_normal((B, T, H, D)), "v": rng.standard_normal((B, T, H, D))}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}

    def run(model):
        s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run(None, feeds)

    want = run(m)
    assert read_new_kv_like_past(m) == 2
    assert _drop_dead(m) == 2                                  # the product-layout Transposes
    fused = [n for n in m.graph.node if n.op_type == "FusedMatMul"]
    assert sorted(n.input[1] for n in fused) == ["present_key_0", "present_value_0"]
    for got, exp in zip(run(m), want, strict=True):
        np.testing.assert_allclose(got, exp, rtol=1e-6, atol=1e-6)   # same products, kernel order may differ
