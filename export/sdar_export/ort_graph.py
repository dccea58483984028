"""ONNX Runtime-only rewrites of the step graph (``step.onnx``; TensorRT never sees it).

Projections that read the same activation (q/k/v, gate/up) become one wider matmul whose weight is
a ``Concat`` of the original initializers, followed by a ``Split``:

* fewer kernel launches, and for ``MatMulNBits`` the activation is quantized to int8 once instead
  of once per projection;
* the weights on disk stay the ones the standard graphs use (same canonical names, one copy in a
  shared data file): ONNX Runtime folds the constant ``Concat`` when the session is created, drops
  the inputs nothing else reads, and prepacks the result, so memory holds one copy.

Exact: each output column is the same dot product over K as before, only computed in a wider call.

The step graph's shape arithmetic of the static axes (batch, heads, head_dim) is also folded into
constants, the dynamic axes (T, P) are read once from the graph inputs instead of once per layer, and
identity Casts are dropped (:func:`fold_static_shapes`): fewer tiny nodes for ONNX Runtime to launch.
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


def _remove_nodes(m, visit) -> int:
    """Walk the nodes in graph order, each one's inputs first renamed through the aliases so far;
    ``visit(node)`` returns {output: value that replaces it} to remove the node, or None to keep it.
    Returns how many were removed."""
    alias: dict[str, str] = {}
    keep = []
    for node in m.graph.node:
        for i, x in enumerate(node.input):
            if x in alias:
                node.input[i] = alias[x]
        replaced = visit(node)
        if replaced is None:
            keep.append(node)
        else:
            alias.update(replaced)
    removed = len(m.graph.node) - len(keep)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return removed


def merge_duplicate_casts(m) -> int:
    """One Cast per (input, target type), and none of an already cast value: the exporter writes
    one per projection (``x.to(dtype)`` in each linear, chained), which would hide that q/k/v
    (gate/up) read the same activation."""
    graph_outputs = {o.name for o in m.graph.output}
    first: dict[tuple, str] = {}
    cast_to: dict[str, int] = {}

    def visit(node):
        if node.op_type != "Cast" or node.output[0] in graph_outputs:
            return None
        to = _attrs(node).get("to")
        if cast_to.get(node.input[0]) == to:      # Cast(Cast(x, t), t): the inner one
            return {node.output[0]: node.input[0]}
        key = (node.input[0], to)
        if key in first:
            return {node.output[0]: first[key]}
        first[key] = node.output[0]
        cast_to[node.output[0]] = to
        return None

    return _remove_nodes(m, visit)


def optimize_for_ort(m, rope: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
    """All ONNX Runtime-only rewrites of the step graph, in place; returns what was done.
    ``rope``: (cos, sin) tables [positions, head_dim / 2] float32 for :func:`fuse_rotary`."""
    from .ort_fusions import (  # noqa: PLC0415
        collapse_reshape_chains,
        fold_attention_scale,
        fuse_norms,
        read_new_kv_like_past,
    )

    casts = merge_duplicate_casts(m)
    done = {"merged_casts": casts, "fused_matmul_groups": fuse_shared_input_matmuls(m)}
    if rope is not None:
        done["rotary"] = fuse_rotary(m, *rope)
        _drop_dead(m)
    done.update(fuse_norms(m))
    done["folded_attention_scales"] = fold_attention_scale(m)
    done["collapsed_reshapes"] = collapse_reshape_chains(m)
    done["new_kv_read_like_past"] = read_new_kv_like_past(m)
    _drop_dead(m)
    return done


# --------------------------------------------------------------------------- rotary embedding
#
# RoPE as traced is ~11 nodes per tensor (Slice x2, Neg, Concat, Mul x2, Add, plus the cos/sin
# broadcasts), twice per layer. com.microsoft.RotaryEmbedding does it in one kernel from cos/sin
# tables of every position, with ``past_len`` as the position offset (positions past_len + t): the
# same products and sum per element (x*cos - x2*sin, x2*cos + x*sin), so the validation tolerances
# hold. The tables are the model's own cos/sin of pos * inv_freq in float32.

ROTARY_POSITIONS = "past_len"


def _producers(m) -> dict:
    return {o: n for n in m.graph.node for o in n.output}


def _has_ancestor(name: str, op: str, prod: dict, depth: int = 6) -> bool:
    """Whether ``op`` produces ``name`` within ``depth`` hops up the graph (cos / sin provenance)."""
    frontier = [name]
    for _ in range(depth):
        nodes = [prod[x] for x in frontier if x in prod]
        if any(n.op_type == op for n in nodes):
            return True
        frontier = [x for n in nodes for x in n.input]
    return False


def _const(name: str, inits: dict) -> np.ndarray | None:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name]) if name in inits else None


def _is_half_slice(node, x: str, lo: int, hi: int | None, inits: dict, half: int) -> bool:
    """Slice(x) over the last axis from ``lo`` to ``hi`` (None: to the end), step 1."""
    if node is None or node.op_type != "Slice" or node.input[0] != x or len(node.input) < 4:
        return False
    starts, ends, axes = (_const(n, inits) for n in node.input[1:4])
    steps = _const(node.input[4], inits) if len(node.input) > 4 else np.ones(1, np.int64)
    if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)):
        return False
    end_ok = int(ends[0]) >= 2 * half if hi is None else int(ends[0]) == hi
    return int(starts[0]) == lo and end_ok and int(axes[0]) in (-1, 3) and int(steps[0]) == 1


def _rotary_match(add, prod: dict, inits: dict, half: int) -> tuple[str, str, str] | None:
    """(x, cos, sin) if ``add`` is x * cos + rotate_half(x) * sin, else None."""
    muls = [prod.get(x) for x in add.input]
    if add.op_type != "Add" or any(n is None or n.op_type != "Mul" for n in muls):
        return None
    for rot, direct in (muls, muls[::-1]):
        cat = next((prod[x] for x in rot.input if x in prod and prod[x].op_type == "Concat"), None)
        if cat is None or len(cat.input) != 2 or _attrs(cat).get("axis") not in (-1, 3):
            continue
        sin = next(x for x in rot.input if x != cat.output[0])
        neg = prod.get(cat.input[0])
        if neg is None or neg.op_type != "Neg" or neg.input[0] not in prod:
            continue
        x = prod[neg.input[0]].input[0]
        if x not in direct.input:
            continue
        cos = next(y for y in direct.input if y != x)
        if (_is_half_slice(prod[neg.input[0]], x, half, None, inits, half)
                and _is_half_slice(prod.get(cat.input[1]), x, 0, half, inits, half)
                and _has_ancestor(cos, "Cos", prod) and _has_ancestor(sin, "Sin", prod)):
            return x, cos, sin
    return None


def fuse_rotary(m, cos_table: np.ndarray, sin_table: np.ndarray) -> int:
    """Replace every traced RoPE by com.microsoft.RotaryEmbedding on a [B, T, heads * D] view;
    returns how many. The x * cos + rotate_half(x) * sin nodes are left for _drop_dead."""
    from onnx import helper, numpy_helper

    half = cos_table.shape[1]
    inits = _initializers(m)
    prod = _producers(m)
    names = {"cos": "rotary_cos_cache", "sin": "rotary_sin_cache", "flat": "rotary_flat_shape",
             "heads": "rotary_heads_shape"}
    out, fused = [], 0
    for node in m.graph.node:
        match = _rotary_match(node, prod, inits, half) if node.op_type == "Add" else None
        if match is None:
            out.append(node)
            continue
        x, base = match[0], node.name + "_rotary"
        rotary_in = [base + "_x", ROTARY_POSITIONS, names["cos"], names["sin"]]
        out += [helper.make_node("Reshape", [x, names["flat"]], [base + "_x"], name=base + "_flat"),
                helper.make_node("RotaryEmbedding", rotary_in, [base + "_y"], name=base,
                                 domain="com.microsoft", interleaved=0),
                helper.make_node("Reshape", [base + "_y", names["heads"]], list(node.output),
                                 name=base + "_heads")]
        fused += 1
    if fused:
        m.graph.initializer.extend([
            numpy_helper.from_array(np.ascontiguousarray(cos_table, np.float32), names["cos"]),
            numpy_helper.from_array(np.ascontiguousarray(sin_table, np.float32), names["sin"]),
            numpy_helper.from_array(np.array([0, 0, -1], np.int64), names["flat"]),
            numpy_helper.from_array(np.array([0, 0, -1, 2 * half], np.int64), names["heads"])])
        del m.graph.node[:]
        m.graph.node.extend(out)
        if not any(o.domain == "com.microsoft" for o in m.opset_import):
            m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


# --------------------------------------------------------------------------- static shapes
#
# The traced graph computes every reshape target and slice bound at run time from Shape nodes
# (Shape -> Gather -> Unsqueeze -> Concat, ...), about 30 tiny nodes per layer. Each costs ONNX
# Runtime a kernel launch (~5-10 us on CPU): a few ms per forward, which matters once the weights
# are 4-bit. Only the token axes (T, P, num_logits) are dynamic and the batch is static, so most of
# these values are known at export: they become constants, Reshape targets use 0 (copy that input
# dim) and -1 (the one remaining dim) for the dynamic axes, and the dead plumbing is dropped.

_INT_OPS = {"Unsqueeze", "Squeeze", "Cast", "Div", "Mul", "Add", "Sub", "Concat", "Gather"}


def _inferred_dims(m) -> dict[str, list]:
    """Per value: dims from ONNX shape inference (ints, symbol names, or None when unknown)."""
    return _inferred(m)[0]


def _inferred(m) -> tuple[dict[str, list], dict[str, int]]:
    """Per value: (dims, element type) from ONNX shape inference; dims are ints, symbol names, or
    None when unknown.

    Runs on a data-free copy (weights over 1 KiB dropped) so a > 2 GB model can be inferred.
    """
    import onnx
    from onnx import shape_inference

    c = onnx.ModelProto()
    c.ir_version, c.producer_name = m.ir_version, m.producer_name
    c.opset_import.extend(m.opset_import)
    g = c.graph
    g.node.extend(m.graph.node)
    g.input.extend(m.graph.input)
    g.output.extend(m.graph.output)
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.raw_data) > 1024:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.append(t)
    inferred = shape_inference.infer_shapes(c, data_prop=True)
    out: dict[str, list] = {}
    types: dict[str, int] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tt = v.type.tensor_type
        if tt.elem_type:
            types[v.name] = tt.elem_type
        if tt.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                           for d in tt.shape.dim]
    return out, types


def _eval_int(node, vals: list[np.ndarray], attrs: dict) -> np.ndarray | None:
    """The value of a small integer node from constant inputs (ONNX semantics), or None."""
    op = node.op_type
    if op == "Unsqueeze":
        return np.expand_dims(vals[0], tuple(int(a) for a in vals[1]))
    if op == "Squeeze":
        return np.squeeze(vals[0], tuple(int(a) for a in vals[1])) if len(vals) > 1 else np.squeeze(vals[0])
    if op == "Cast":
        from onnx import helper

        return vals[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Concat":
        return np.concatenate(vals, axis=attrs.get("axis", 0))
    if op == "Gather":
        return np.take(vals[0], vals[1], axis=attrs.get("axis", 0))
    a, b = vals
    if a.dtype.kind not in "iu" or b.dtype.kind not in "iu":
        return None
    if op == "Div":
        return np.trunc(a / b).astype(a.dtype) if np.all(b != 0) else None   # ONNX integer Div truncates
    return {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract}[op](a, b).astype(a.dtype)


def _known_values(m, dims: dict[str, list]) -> dict[str, np.ndarray]:
    """Integer values computable at export: constants, Shape of static-shaped values, and _INT_OPS
    over those (Gather of a Shape picks static entries even when other dims are dynamic)."""
    from onnx import numpy_helper

    known = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer
             if t.data_type in (6, 7) and len(t.dims) <= 1 and len(t.raw_data) <= 1024}
    partial: dict[str, list] = {}          # Shape outputs with some dynamic entries
    for node in m.graph.node:
        a = _attrs(node)
        if node.op_type == "Constant" and "value" in a and node.output[0]:
            v = numpy_helper.to_array(a["value"])
            if v.dtype.kind in "iu":
                known[node.output[0]] = v
        elif node.op_type == "Shape" and not set(a) - {"start", "end"} and node.input[0] in dims:
            d = dims[node.input[0]][a.get("start", 0):a.get("end")]
            if all(isinstance(x, int) for x in d):
                known[node.output[0]] = np.array(d, np.int64)
            else:
                partial[node.output[0]] = d
        elif (node.op_type == "Gather" and node.input[0] in partial and node.input[1] in known
              and a.get("axis", 0) == 0):
            picked = np.take(np.array(partial[node.input[0]], dtype=object), known[node.input[1]])
            if all(isinstance(x, int) for x in np.atleast_1d(np.asarray(picked, dtype=object))):
                known[node.output[0]] = np.array(picked, np.int64)
        elif node.op_type in _INT_OPS and node.input and all(x in known for x in node.input):
            v = _eval_int(node, [known[x] for x in node.input], a)
            if v is not None:
                known[node.output[0]] = v
    return known


def _reshape_target(in_dims: list | None, out_dims: list | None) -> np.ndarray | None:
    """A constant Reshape target equal to the inferred output shape: static dims as is, a dynamic
    dim that is the input's dim at the same index as 0 (copy), at most one other as -1."""
    if out_dims is None or any(d is None for d in out_dims):
        return None
    target = []
    for i, d in enumerate(out_dims):
        if isinstance(d, int):
            target.append(d)
        elif in_dims is not None and i < len(in_dims) and in_dims[i] == d:
            target.append(0)
        else:
            target.append(-1)
    if target.count(-1) > 1 or any(isinstance(d, int) and d == 0 for d in out_dims):
        return None     # 0 would mean "copy" to Reshape; two -1 are ambiguous
    return np.array(target, np.int64)


def _drop_dead(m) -> int:
    """Remove nodes whose outputs nothing reads (graph outputs count as read)."""
    used = {o.name for o in m.graph.output}
    keep = []
    for node in reversed(m.graph.node):
        if any(o in used for o in node.output if o):
            keep.append(node)
            used.update(node.input)
    dropped = len(m.graph.node) - len(keep)
    del m.graph.node[:]
    m.graph.node.extend(reversed(keep))
    inits = [t for t in m.graph.initializer if t.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    return dropped


def fold_static_shapes(m) -> dict:
    """Constant Reshape targets and shape arithmetic (see above), in place; run on the float graph
    (ONNX shape inference does not know the contrib ops the quantized graph holds)."""
    from onnx import numpy_helper

    dims, types = _inferred(m)
    identity_casts = drop_identity_casts(m, types)
    known = _known_values(m, dims)
    added: dict[str, str] = {}

    def const(value: np.ndarray) -> str:
        key = f"{value.dtype}:{value.shape}:{value.tobytes().hex()}"
        if key not in added:
            name = f"static_shape_{len(added)}"
            # not np.ascontiguousarray: it makes a 0-d scalar 1-d
            m.graph.initializer.append(numpy_helper.from_array(np.array(value, order="C"), name))
            added[key] = name
        return added[key]

    initializers = {t.name for t in m.graph.initializer}
    reshapes = 0
    for node in m.graph.node:
        if node.op_type in ("Constant", "Shape") or node.op_type in _INT_OPS and node.output[0] in known:
            continue      # itself plumbing: dropped if nothing else reads it
        if node.op_type == "Reshape" and node.input[1] not in known:
            target = _reshape_target(dims.get(node.input[0]), dims.get(node.output[0]))
            if target is not None:
                node.input[1] = const(target)
                reshapes += 1
        for i, x in enumerate(node.input):
            if x in known and x not in initializers and known[x].size <= 64:
                node.input[i] = const(known[x])
    shared = share_dynamic_dims(m, dims, const)
    merged = eliminate_common_subexpressions(m)
    return {"static_reshapes": reshapes, "identity_casts": identity_casts, "shared_dynamic_dims": shared,
            "merged_nodes": merged, "dropped_nodes": _drop_dead(m)}


# --------------------------------------------------------------------------- dynamic dims
#
# What is left of the shape plumbing reads the dynamic axes (T, P) through a Shape of each layer's
# own tensors (the hidden state, that layer's past K), so every layer repeats the same Shape ->
# Gather -> Unsqueeze / Add / Concat chain. Every such dim is the dim of a graph input (T is
# input_ids' axis 1, P is past_key_0's axis 0: shape inference names them by the same symbol), so
# each Gather(Shape(v), k) is rewired to read the graph input instead; the chains of all layers
# then become identical and eliminate_common_subexpressions keeps one copy.

def share_dynamic_dims(m, dims: dict[str, list], const) -> int:
    """Rewire Gather(Shape(v), k) of a symbolic dim to Gather(Shape(graph input), axis) of the same
    symbol; returns how many. ``const(value)``: the name of an initializer holding ``value``."""
    from onnx import helper

    source: dict[str, tuple[str, int]] = {}
    for inp in m.graph.input:
        for axis, d in enumerate(dims.get(inp.name) or []):
            if isinstance(d, str):
                source.setdefault(d, (inp.name, axis))
    known = {t.name: t for t in m.graph.initializer}
    shape_of = {n.output[0]: n.input[0] for n in m.graph.node
                if n.op_type == "Shape" and not n.attribute}
    shapes: dict[str, str] = {}       # graph input -> the output of its one Shape node
    front, rewired = [], 0
    for node in m.graph.node:
        if (node.op_type != "Gather" or node.input[0] not in shape_of or node.input[1] not in known
                or _attrs(node).get("axis", 0) != 0):
            continue
        index = _const(node.input[1], known)
        value_dims = dims.get(shape_of[node.input[0]]) or []
        if index is None or index.size != 1 or not -len(value_dims) <= int(index.flat[0]) < len(value_dims):
            continue
        symbol = value_dims[int(index.flat[0])]
        if not isinstance(symbol, str) or symbol not in source:
            continue
        inp, axis = source[symbol]
        if inp not in shapes:
            shapes[inp] = f"shared_shape_of_{inp}"
            front.append(helper.make_node("Shape", [inp], [shapes[inp]], name=shapes[inp] + "_node"))
        node.input[0] = shapes[inp]
        node.input[1] = const(np.array(axis, np.int64).reshape(index.shape))
        rewired += 1
    prepend_nodes(m, front)
    return rewired


def prepend_nodes(m, nodes: list) -> None:
    """Put ``nodes`` (reading only graph inputs and initializers) in front of graph ``m``'s nodes."""
    if nodes:
        rest = list(m.graph.node)
        del m.graph.node[:]
        m.graph.node.extend(list(nodes) + rest)


def eliminate_common_subexpressions(m) -> int:
    """Merge nodes with the same op, attributes and inputs (in graph order, so chains collapse
    link by link); returns how many were merged. Graph outputs are never renamed."""
    graph_outputs = {o.name for o in m.graph.output}
    seen: dict[tuple, list[str]] = {}

    def visit(node):
        if (node.op_type.startswith("Random") or any(o in graph_outputs for o in node.output)
                or any(a.g.node or a.graphs for a in node.attribute)):
            return None
        key = (node.domain, node.op_type, tuple(node.input),
               tuple(a.SerializeToString() for a in node.attribute), len(node.output))
        if key in seen:
            return dict(zip(node.output, seen[key], strict=True))
        seen[key] = list(node.output)
        return None

    return _remove_nodes(m, visit)


def drop_identity_casts(m, types: dict[str, int]) -> int:
    """Remove Casts to the type their input already has (``.float()`` of a float32 tensor is traced
    as one: the logits Cast alone copies B x rows x vocab floats). A Cast writing a graph output
    hands that name to its input's producer when the Cast is that value's only reader."""
    graph_outputs = {o.name for o in m.graph.output}
    graph_inputs = {i.name for i in m.graph.input}
    readers: dict[str, int] = defaultdict(int)
    for node in m.graph.node:
        for x in node.input:
            readers[x] += 1
    producer = _producers(m)

    def visit(node):
        x = node.input[0] if node.input else ""
        if not x or node.op_type != "Cast" or types.get(x) != _attrs(node).get("to"):
            return None
        y = node.output[0]
        if y not in graph_outputs:
            readers[x] += readers[y] - 1       # y's readers read x from here on; this Cast no longer
            return {y: x}
        if x in producer and x not in graph_inputs | graph_outputs and readers[x] == 1:
            src = producer[x]
            src.output[list(src.output).index(x)] = y
            return {}
        return None

    return _remove_nodes(m, visit)
