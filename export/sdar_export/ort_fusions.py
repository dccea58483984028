"""Step-graph fusions into ONNX Runtime's contrib normalization ops, and the plumbing they leave.

Run by :func:`sdar_export.ort_graph.optimize_for_ort` after the rotary fusion:

* :func:`fuse_norms` - every traced RMSNorm (Pow, ReduceMean, Add, Sqrt, Div, Mul, Mul) becomes
  ``SimplifiedLayerNormalization`` and every residual Add feeding one becomes part of a
  ``com.microsoft.SkipSimplifiedLayerNormalization`` (which also outputs the sum for the next
  residual), by onnxruntime.transformers' own fusions. ONNX Runtime fuses the plain RMSNorm itself
  when a session starts, but not the residual Add, so that is one node fewer per norm per layer.
* :func:`fold_attention_scale` - the attention's 1/sqrt(head_dim) Mul on q is folded into the
  q_norm weight (RoPE between them is linear), one Mul fewer per layer.
* :func:`collapse_reshape_chains` - Reshape(Reshape(x)) becomes one Reshape where the first one's
  result has no other reader (the Mul removed above leaves such pairs).
* :func:`read_new_kv_like_past` - the attention's products with the new block's K / V read the
  ``present_*`` outputs in the cache layout through a FusedMatMul, as they read the past: two
  Transposes fewer per layer.

The last three are hand-written: onnxruntime.transformers' attention fusions match BERT/GPT-2
patterns (and ONNX Runtime's fused attention ops take neither this cache layout, read in place, nor
the block-bidirectional mask), its MatMul scale fusion only sees a Mul that feeds a MatMul directly
while here the Mul sits before the q view's Reshape/Transpose, and its transpose optimizer undoes
a Transpose rewired to read the present (so the FusedMatMul is written here).
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def _wiring(m) -> tuple[dict, dict, Counter, set]:
    """(initializers by name, producing node by output name, readers per name, graph outputs)."""
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    readers = Counter(x for n in m.graph.node for x in n.input)
    return inits, producer, readers, {o.name for o in m.graph.output}


def _weightless_copy(m):
    """A copy of ``m`` whose large initializers keep their name, type and dims but no data: the
    fusions read only small constants (epsilon, exponents), and a > 2 GB model stays cheap."""
    import onnx
    from onnx import TensorProto

    c = onnx.ModelProto()
    c.ir_version, c.producer_name = m.ir_version, m.producer_name
    c.opset_import.extend(m.opset_import)
    g = c.graph
    g.name = m.graph.name or "step"
    g.node.extend(m.graph.node)
    g.input.extend(m.graph.input)
    g.output.extend(m.graph.output)
    for t in m.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL or len(t.raw_data) > 1024:
            stub = TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
            g.initializer.append(stub)
        else:
            g.initializer.append(t)
    return c


def fuse_norms(m) -> dict:
    """RMSNorm -> SimplifiedLayerNormalization, residual Add + RMSNorm -> SkipSimplifiedLayerNormalization
    (onnxruntime.transformers fusions), in place; returns the node counts."""
    from onnxruntime.transformers.fusion_simplified_layernorm import FusionSimplifiedLayerNormalization
    from onnxruntime.transformers.fusion_skiplayernorm import FusionSkipLayerNormalization
    from onnxruntime.transformers.onnx_model import OnnxModel

    light = _weightless_copy(m)
    model = OnnxModel(light)
    FusionSimplifiedLayerNormalization(model).apply()
    # shape_infer=False: ONNX Runtime's symbolic shape inference fails on this graph (its contrib
    # ops), and what the check guards (a skip input broadcast over the batch or sequence axis) cannot
    # occur here: every Add in front of an RMSNorm in the traced network is the residual sum of two
    # [B, T, hidden] tensors (model.py, _Layer.forward). Export validation checks the result.
    FusionSkipLayerNormalization(model, "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
                                 shape_infer=False).apply()
    model.topological_sort(is_deterministic=True)
    del m.graph.node[:]
    m.graph.node.extend(light.graph.node)
    have = {t.name for t in m.graph.initializer}
    m.graph.initializer.extend(t for t in light.graph.initializer if t.name not in have)   # new ones, if any
    ops = [n.op_type for n in m.graph.node]
    return {"simplified_layer_norm": ops.count("SimplifiedLayerNormalization"),
            "skip_simplified_layer_norm": ops.count("SkipSimplifiedLayerNormalization")}


def _scalar(name: str, inits: dict, constants: dict) -> float | None:
    """The value of a one-element float initializer / Constant output, else None."""
    from onnx import numpy_helper

    t = inits.get(name) or constants.get(name)
    if t is None or t.data_type != 1 or int(np.prod(t.dims)) != 1:
        return None
    return float(numpy_helper.to_array(t).reshape(()))


def fold_attention_scale(m) -> int:
    """Mul(q, s) with a scalar s, where q comes from SimplifiedLayerNormalization(., gamma) through
    Reshape / RotaryEmbedding only (each read by the next alone): gamma becomes gamma * s and the
    Mul is dropped. Returns how many. Exact up to one float32 rounding of gamma * s."""
    from onnx import helper, numpy_helper

    inits, producer, readers, outputs = _wiring(m)
    constants = {n.output[0]: helper.get_attribute_value(n.attribute[0]) for n in m.graph.node
                 if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value"}
    alias: dict[str, str] = {}
    folded: set[str] = set()       # outputs of the norms already scaled
    for node in m.graph.node:
        if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.input) != 2:
            continue
        for x, s in (node.input, node.input[::-1]):
            scale = _scalar(s, inits, constants)
            if scale is None:
                continue
            up = producer.get(x)
            while (up is not None and up.op_type in ("Reshape", "RotaryEmbedding")
                   and readers.get(up.output[0]) == 1 and up.output[0] not in outputs):
                up = producer.get(up.input[0])
            if (up is None or up.op_type != "SimplifiedLayerNormalization" or up.input[1] not in inits
                    or readers.get(up.output[0]) != 1 or up.output[0] in folded):
                continue
            gamma = numpy_helper.to_array(inits[up.input[1]])
            name = f"{up.input[1]}_times_{scale:.9g}"
            scaled = (gamma.astype(np.float64) * scale).astype(gamma.dtype)
            if name not in inits:
                inits[name] = numpy_helper.from_array(scaled, name)
                m.graph.initializer.append(inits[name])
            up.input[1] = name
            folded.add(up.output[0])
            alias[node.output[0]] = x
            break
    if not alias:
        return 0
    keep = [n for n in m.graph.node if not (n.op_type == "Mul" and n.output[0] in alias)]
    for n in keep:
        for i, x in enumerate(n.input):
            n.input[i] = alias.get(x, x)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return len(alias)


def collapse_reshape_chains(m) -> int:
    """Reshape(Reshape(x, s1), s2) -> Reshape(x, s2') when the inner result has no other reader and
    both shapes are constant initializers; s2' is s2 with each 0 ("copy the input's dim") that the
    inner Reshape also copied kept as 0, and each 0 whose dim the inner one set replaced by that
    dim. Returns how many inner Reshapes were bypassed (left for dead-node removal)."""
    from onnx import helper, numpy_helper

    inits, producer, readers, outputs = _wiring(m)

    def plain(n) -> bool:
        return (n.op_type == "Reshape" and n.domain in ("", "ai.onnx") and n.input[1] in inits
                and not any(a.name == "allowzero" and helper.get_attribute_value(a) for a in n.attribute))

    collapsed = 0
    for node in m.graph.node:
        inner = producer.get(node.input[0]) if node.op_type == "Reshape" else None
        if (inner is None or not plain(node) or not plain(inner) or readers.get(inner.output[0]) != 1
                or inner.output[0] in outputs):
            continue
        s1 = numpy_helper.to_array(inits[inner.input[1]]).astype(np.int64)
        s2 = numpy_helper.to_array(inits[node.input[1]]).astype(np.int64).copy()
        ok = True
        for i in np.flatnonzero(s2 == 0):
            if i >= s1.size or s1[i] < 0:
                ok = False          # the copied dim is inferred (-1) or absent in the inner shape
            elif s1[i] > 0:
                s2[i] = s1[i]
        if not ok:
            continue
        if not np.array_equal(s2, numpy_helper.to_array(inits[node.input[1]])):
            name = f"{node.input[1]}_collapsed_{'_'.join(str(int(d)) for d in s2).replace('-', 'm')}"
            if name not in inits:
                inits[name] = numpy_helper.from_array(s2, name)
                m.graph.initializer.append(inits[name])
            node.input[1] = name
        node.input[0] = inner.input[0]
        readers[inner.output[0]] = 0
        collapsed += 1
    return collapsed


def _perm(node) -> list[int] | None:
    from onnx import helper

    a = [x for x in node.attribute if x.name == "perm"]
    return [int(v) for v in helper.get_attribute_value(a[0])] if a else None


# FusedMatMul reading a [S, B, H, D] cache-layout tensor as the right operand: transBatchB moves S
# behind the batch axes ([B, H, S, D]), transB then swaps the last two ([B, H, D, S]).
_CACHE_LAYOUT_READS = {(1, 2, 3, 0): 1, (1, 2, 0, 3): 0}      # perm of the cache layout -> transB


def read_new_kv_like_past(m) -> int:
    """The attention's products with the new block's K / V read the ``present_*`` outputs (cache
    layout) through a FusedMatMul, as ONNX Runtime does itself for the ``past_*`` inputs.

    The traced network transposes the new K / V twice: into the cache layout [T, B, KVH, D] (the
    ``present`` output) and into the product's layout ([B, KVH, D, T] for K, [B, KVH, T, D] for V).
    ONNX Runtime folds the past's Transpose into the product (FusedMatMul with transBatchB), but its
    transpose optimizer merges a Transpose of the present back into one of the per-head tensor, so
    the product is written as that FusedMatMul here. Exact (the same products). Returns how many."""
    from onnx import helper

    nodes = list(m.graph.node)
    _, _, readers, outputs = _wiring(m)
    presents = {n.input[0]: n for n in nodes if n.op_type == "Transpose" and n.output[0] in outputs
                and n.output[0].startswith("present_") and _perm(n) is not None}
    transposed = {n.output[0]: n for n in nodes if n.op_type == "Transpose" and n.input[0] in presents}
    replaced = 0
    for i, node in enumerate(nodes):
        t = transposed.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if t is None or readers[t.output[0]] != 1 or _perm(t) is None:
            continue
        present = presents[t.input[0]]
        inverse = np.argsort(_perm(present))       # present[j] = x[p[j]], so x[i] = present[inverse[i]]
        via_present = tuple(int(inverse[k]) for k in _perm(t))
        if via_present not in _CACHE_LAYOUT_READS:
            continue
        name = (node.name or node.output[0]) + "_reads_present"
        fused = helper.make_node("FusedMatMul", [node.input[0], present.output[0]], list(node.output),
                                 name=name, domain="com.microsoft", alpha=1.0, transA=0,
                                 transB=_CACHE_LAYOUT_READS[via_present], transBatchA=0, transBatchB=1)
        m.graph.node[i].CopyFrom(fused)
        replaced += 1
    return replaced
