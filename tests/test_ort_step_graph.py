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
    # q/k/v and gate/up: 2 fused matmuls per layer instead of 5
    assert decode[("ai.onnx", "MatMul")] - step[("ai.onnx", "MatMul")] == 3 * layers
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
