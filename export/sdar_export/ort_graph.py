"""ONNX Runtime-only rewrites of the step graph (``step.onnx``; TensorRT never sees it).

Projections that read the same activation (q/k/v, gate/up) become one wider matmul whose weight is
a ``Concat`` of the original initializers, followed by a ``Split``:

* fewer kernel launches, and for ``MatMulNBits`` the activation is quantized to int8 once instead
  of once per projection;
* the weights on disk stay the ones the standard graphs use (same canonical names, one copy in a
  shared data file): ONNX Runtime folds the constant ``Concat`` when the session is created, drops
  the inputs nothing else reads, and prepacks the result, so memory holds one copy.

Exact: each output column is the same dot product over K as before, only computed in a wider call.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def _initializers(m) -> dict:
    return {t.name: t for t in m.graph.initializer}


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fusable_matmul(node, inits) -> bool:
    return (node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[1] in inits
            and len(inits[node.input[1]].dims) == 2)


def _nbits_key(node) -> tuple | None:
    """What MatMulNBits nodes must share to be fused; None if this one cannot be."""
    if node.op_type != "MatMulNBits" or node.domain != "com.microsoft" or len(node.input) not in (3, 4):
        return None
    a = _attrs(node)
    return ("nbits", a.get("K"), a.get("bits"), a.get("block_size"), a.get("accuracy_level", 0),
            len(node.input))


def _group_key(node, inits) -> tuple | None:
    if _fusable_matmul(node, inits):
        return ("matmul", inits[node.input[1]].dims[0], inits[node.input[1]].data_type)
    key = _nbits_key(node)
    if key is not None and all(x in inits for x in node.input[1:]):
        return key
    return None


def fuse_shared_input_matmuls(m) -> int:
    """Fuse every group of >= 2 weight matmuls reading the same activation; returns groups fused."""
    from onnx import helper, numpy_helper

    inits = _initializers(m)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, node in enumerate(m.graph.node):
        key = _group_key(node, inits)
        if key is not None:
            groups[(node.input[0], *key)].append(i)
    replace: dict[int, list] = {}
    drop: set[int] = set()
    fused = 0
    for (act, kind, *_), idx in groups.items():
        if len(idx) < 2:
            continue
        nodes = [m.graph.node[i] for i in idx]
        base = f"{nodes[0].name}_fused{len(idx)}"
        new = []
        if kind == "matmul":
            widths = [inits[n.input[1]].dims[1] for n in nodes]
            w = base + "_W"
            new.append(helper.make_node("Concat", [n.input[1] for n in nodes], [w], name=base + "_concat",
                                        axis=1))
            y = base + "_Y"
            new.append(helper.make_node("MatMul", [act, w], [y], name=base))
        else:
            a = _attrs(nodes[0])
            widths = [_attrs(n)["N"] for n in nodes]
            packed = []
            for j, suffix in enumerate(("_B", "_scales", "_zp")[: len(nodes[0].input) - 1]):
                name = base + suffix
                new.append(helper.make_node("Concat", [n.input[j + 1] for n in nodes], [name],
                                            name=name + "_concat", axis=0))
                packed.append(name)
            y = base + "_Y"
            new.append(helper.make_node("MatMulNBits", [act, *packed], [y], name=base, domain="com.microsoft",
                                        K=a["K"], N=int(sum(widths)), bits=a["bits"],
                                        block_size=a["block_size"],
                                        accuracy_level=a.get("accuracy_level", 0)))
        split = base + "_split_sizes"
        m.graph.initializer.append(numpy_helper.from_array(np.array(widths, np.int64), split))
        new.append(helper.make_node("Split", [y, split], [n.output[0] for n in nodes], name=base + "_split",
                                    axis=-1))
        replace[idx[0]] = new
        drop.update(idx[1:])
        fused += 1
    if not fused:
        return 0
    out = []
    for i, node in enumerate(m.graph.node):
        if i in replace:
            out.extend(replace[i])
        elif i not in drop:
            out.append(node)
    del m.graph.node[:]
    m.graph.node.extend(out)
    return fused


def merge_duplicate_casts(m) -> int:
    """One Cast per (input, target type), and none of an already cast value: the exporter writes
    one per projection (``x.to(dtype)`` in each linear, chained), which would hide that q/k/v
    (gate/up) read the same activation."""
    graph_outputs = {o.name for o in m.graph.output}
    first: dict[tuple, str] = {}
    cast_to: dict[str, int] = {}
    alias: dict[str, str] = {}
    keep = []
    for node in m.graph.node:
        for i, x in enumerate(node.input):
            if x in alias:
                node.input[i] = alias[x]
        if node.op_type == "Cast" and node.output[0] not in graph_outputs:
            to = _attrs(node).get("to")
            if cast_to.get(node.input[0]) == to:      # Cast(Cast(x, t), t): the inner one
                alias[node.output[0]] = node.input[0]
                continue
            key = (node.input[0], to)
            if key in first:
                alias[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
            cast_to[node.output[0]] = to
        keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return len(alias)


def optimize_for_ort(m) -> dict:
    """All ONNX Runtime-only rewrites of the step graph, in place; returns what was done."""
    casts = merge_duplicate_casts(m)
    return {"merged_casts": casts, "fused_matmul_groups": fuse_shared_input_matmuls(m)}
