"""Every node of every graph sdar-export gives TensorRT uses an operator, element types and
attributes that TensorRT 10.3's ONNX parser documents as supported.

Source of the facts: onnx-tensorrt's docs/operators.md, the operator support matrix the TensorRT
10.x ONNX parser publishes (its rows for these operators are the same from 10.1 to 10.15, so they
are 10.3's), encoded as data in sdar_export.trt_onnx_support.OPS; the checks below also prove the
checker rejects what the table excludes, with the node named."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from sdar_export import cli
from sdar_export.make_checkpoint import make_checkpoint
from sdar_export.trt_onnx_support import OPS, UnsupportedGraph, check_graph, check_model, require_supported

VARIANTS = {
    "fp32": dict(dtype="float32"),
    "fp16": dict(dtype="float16"),
    "bf16": dict(dtype="bfloat16"),
    "int4-qdq": dict(dtype="float16", quantize="int4", quant_format="QDQ", group_size=16),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("trt-ops") / "ck")


@pytest.fixture(scope="module")
def artifacts(checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("trt-ops-art")
    return {name: cli.export(checkpoint, root / name, max_context=32, skip_validate=True, quiet=True, **kw)
            for name, kw in VARIANTS.items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_trt_graph_uses_only_documented_operators(artifacts, variant):
    path = artifacts[variant] / "trt.onnx"
    assert check_graph(path) == []
    m = onnx.load(str(path), load_external_data=False)
    used = {n.op_type for n in m.graph.node}
    assert used <= set(OPS)
    assert {"MatMul", "Softmax"} <= used
    if variant == "int4-qdq":
        dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
        assert dq, "the QDQ form feeds MatMul from DequantizeLinear"
        inits = {t.name: t for t in m.graph.initializer}
        assert all(inits[n.input[0]].data_type == TensorProto.INT4 for n in dq)


def test_standard_graphs_pass_and_the_step_graph_does_not(artifacts):
    art = artifacts["fp16"]
    for name in ("prefill", "decode", "fused"):
        assert check_graph(art / f"{name}.onnx") == []
    problems = check_graph(art / "step.onnx")   # ONNX Runtime contrib ops: never given to TensorRT
    assert any("com.microsoft" in str(p) for p in problems)
    with pytest.raises(UnsupportedGraph, match="RotaryEmbedding"):
        require_supported(art / "step.onnx")


def _tiny_model(nodes, inputs, outputs, initializers=(), opset=18):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def test_rejects_what_the_table_excludes():
    x = _vi("x", TensorProto.FLOAT, [2, 3])
    # an operator the table does not list as supported here
    m = _tiny_model([helper.make_node("Det", ["x"], ["y"], name="det")], [x],
                    [_vi("y", TensorProto.FLOAT, [])])
    assert [p.node for p in check_model(m)] == ["det"]
    # a type outside an operator's row: Cast to INT8 (Cast lists FP32, FP16, BF16, INT32, INT64, UINT8, BOOL)
    m = _tiny_model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT8, name="to_int8")], [x],
                    [_vi("y", TensorProto.INT8, [2, 3])])
    (p,) = check_model(m)
    assert p.node == "to_int8" and "INT8" in p.what
    # MatMul on integers
    xi = _vi("xi", TensorProto.INT32, [2, 2])
    m = _tiny_model([helper.make_node("MatMul", ["xi", "xi"], ["y"], name="int_mm")], [xi],
                    [_vi("y", TensorProto.INT32, [2, 2])])
    assert {p.node for p in check_model(m)} == {"int_mm"}
    # ReduceMean whose axes are computed, not an initializer
    ax = _vi("axes", TensorProto.INT64, [1])
    m = _tiny_model([helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean")], [x, ax],
                    [_vi("y", TensorProto.FLOAT, None)])
    (p,) = check_model(m)
    assert p.node == "mean" and "constant" in p.what
    # a contrib operator
    m = _tiny_model([helper.make_node("FastGelu", ["x"], ["y"], name="gelu", domain="com.microsoft")], [x],
                    [_vi("y", TensorProto.FLOAT, [2, 3])])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    assert [p.node for p in check_model(m)] == ["gelu"]
    # an opset the parser does not read
    m = _tiny_model([helper.make_node("Relu", ["x"], ["y"], name="relu")], [x],
                    [_vi("y", TensorProto.FLOAT, [2, 3])], opset=23)
    assert any(p.op == "opset" for p in check_model(m))


def test_dequantize_linear_restrictions():
    import numpy as np

    w = numpy_helper.from_array(np.zeros((32, 16), np.int8), "w")
    scale = numpy_helper.from_array(np.ones((32,), np.float16), "s")
    zp = numpy_helper.from_array(np.ones((32,), np.int8), "zp")
    out = _vi("y", TensorProto.FLOAT16, [32, 16])
    ok = _tiny_model([helper.make_node("DequantizeLinear", ["w", "s"], ["y"], axis=0, name="dq")], [], [out],
                     [w, scale], opset=21)
    assert check_model(ok) == []
    node = helper.make_node("DequantizeLinear", ["w", "s", "zp"], ["y"], axis=0, name="dq_zp")
    asym = _tiny_model([node], [], [out], [w, scale, zp], opset=21)
    (p,) = check_model(asym)
    assert p.node == "dq_zp" and "zero" in p.what
    # INT4 must be a 2-D weight
    w4 = helper.make_tensor("w4", TensorProto.INT4, [2, 4, 16], np.zeros(128, np.int8).tolist())
    s4 = numpy_helper.from_array(np.ones((2, 4, 1), np.float16), "s4")
    node = helper.make_node("DequantizeLinear", ["w4", "s4"], ["y4"], axis=2, block_size=16, name="dq4")
    m = _tiny_model([node], [], [_vi("y4", TensorProto.FLOAT16, [2, 4, 16])], [w4, s4], opset=21)
    (p,) = check_model(m)
    assert p.node == "dq4" and "2-D" in p.what
