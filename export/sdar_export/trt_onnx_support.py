"""What TensorRT 10.3's ONNX parser (JetPack 6.1/6.2) documents as supported, as data, and a check of
an ONNX graph against it: every node's operator, the element types it is given and the attribute /
constant-input restrictions. Does NOT import torch.

Source: the "Operator Support Matrix" of onnx-tensorrt's ``docs/operators.md``, the operator list
the TensorRT 10.x ONNX parser publishes per release (https://github.com/onnx/onnx-tensorrt). The
10.3 release's copy lies between the 10.1 and 10.15 ones; for every operator listed below the
"Supported Types" and "Restrictions" columns are the same in both (10.15 only adds INT32/INT64 to
Pow and drops Slice's `axes` restriction; the stricter 10.1 form is kept), so these are 10.3's.
Two facts come from TensorRT's quantization guide rather than the table: INT4 exists only as
weight-only, block-quantized weights (a 2-D constant dequantized along one axis), and the parser
reads opset 21, the first opset with INT4 (the table's header still says opset 20 in 10.1, while
its DequantizeLinear row lists INT4).

Only the operators the exporter's graphs use (and a few neighbours) are listed: an operator that
is not here fails the check with a message saying so, so a new op is added on purpose, with its
row of the table, never by accident.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

SOURCE = "onnx-tensorrt docs/operators.md (TensorRT 10.x ONNX parser), rows as of TensorRT 10.3"
MIN_OPSET, MAX_OPSET = 9, 21

F = ("FP32", "FP16", "BF16")
FI = F + ("INT32", "INT64")
FIB = FI + ("BOOL",)
BOOL = ("BOOL",)
INDEX = ("INT32", "INT64")


@dataclass(frozen=True)
class Op:
    """One row of the table: the element types of the operator's data tensors, which inputs and
    outputs carry them (others are index / shape tensors: INT32 or INT64), the inputs that must
    be constants (an initializer or a Constant node) and attributes that must not appear."""

    types: tuple[str, ...]
    inputs: tuple[int, ...] | str = "all"     # indices typed by `types`, or "all"
    outputs: bool = False                     # output 0 is typed by `types` too
    index_inputs: tuple[int, ...] = ()        # INT32 / INT64 tensors (shapes, axes, indices)
    constant_inputs: tuple[int, ...] = ()     # "must be an initializer" in the table
    forbidden_attributes: tuple[str, ...] = ()
    other: dict = field(default_factory=dict)  # per-input types that differ from `types`


OPS: dict[str, Op] = {
    # elementwise
    "Add": Op(FI), "Sub": Op(FI), "Mul": Op(FI), "Div": Op(FI), "Mod": Op(FI),
    "Neg": Op(FI), "Max": Op(FI), "Min": Op(FI),
    "Pow": Op(F), "Sqrt": Op(F), "Exp": Op(F), "Reciprocal": Op(F), "Erf": Op(F), "Tanh": Op(F),
    "Sin": Op(F), "Cos": Op(F), "Sigmoid": Op(F),
    "Equal": Op(FI), "Less": Op(FI), "LessOrEqual": Op(FI), "Greater": Op(FI), "GreaterOrEqual": Op(FI),
    "Not": Op(BOOL), "And": Op(BOOL), "Or": Op(BOOL), "Xor": Op(BOOL),
    "Where": Op(FIB, inputs=(1, 2), other={0: BOOL}),
    # linear algebra, normalisation
    "MatMul": Op(F),
    "Softmax": Op(F),
    "ReduceMean": Op(FI, inputs=(0,), index_inputs=(1,), constant_inputs=(1,)),
    "ReduceSum": Op(FI, inputs=(0,), index_inputs=(1,), constant_inputs=(1,)),
    "ReduceMax": Op(FI, inputs=(0,), index_inputs=(1,), constant_inputs=(1,)),
    # shapes and data movement
    "Shape": Op(FIB, inputs=(0,)),
    "Constant": Op(FIB, inputs=(), outputs=True,
                   forbidden_attributes=("sparse_value", "value_string", "value_strings")),
    "ConstantOfShape": Op(FIB, inputs=(), outputs=True, index_inputs=(0,)),
    "Cast": Op(FIB + ("UINT8",), inputs=(0,), outputs=True),
    "Reshape": Op(FIB, inputs=(0,), index_inputs=(1,)),
    "Expand": Op(FIB, inputs=(0,), index_inputs=(1,)),
    "Unsqueeze": Op(FIB, inputs=(0,), index_inputs=(1,), constant_inputs=(1,)),
    "Squeeze": Op(FIB, inputs=(0,), index_inputs=(1,), constant_inputs=(1,)),
    "Transpose": Op(FIB, inputs=(0,)),
    "Concat": Op(FIB),
    "Split": Op(FIB, inputs=(0,), index_inputs=(1,)),
    "Slice": Op(FIB, inputs=(0,), index_inputs=(1, 2, 3, 4), constant_inputs=(3,)),
    "Gather": Op(FIB, inputs=(0,), index_inputs=(1,)),
    "Range": Op(FI),
    "Identity": Op(FIB, inputs=(0,)),
    "Trilu": Op(FIB, inputs=(0,), index_inputs=(1,)),
    # weight-only quantization: x_zero_point must be zero
    "DequantizeLinear": Op(("INT8", "FP8", "INT4"), inputs=(0,), other={1: F}),
}

# ONNX TensorProto element types -> the table's names.
_ONNX_TYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "FP16", 11: "DOUBLE",
               16: "BF16", 17: "FP8", 22: "INT4"}


class UnsupportedGraph(ValueError):
    """A node TensorRT 10.3's ONNX parser does not document as supported; names the node."""


@dataclass
class Problem:
    node: str
    op: str
    what: str

    def __str__(self) -> str:
        return f"node {self.node!r} ({self.op}): {self.what}"


def _type_name(elem: int) -> str:
    return _ONNX_TYPES.get(elem, f"ONNX type {elem}")


def check_model(model) -> list[Problem]:
    """Problems of an in-memory ``onnx.ModelProto`` (empty when TensorRT 10.3 documents every node)."""
    import onnx
    from onnx import numpy_helper

    problems: list[Problem] = []
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx") and not MIN_OPSET <= o.version <= MAX_OPSET:
            problems.append(Problem("<graph>", "opset", f"opset {o.version} is outside the parser's "
                                    f"{MIN_OPSET}..{MAX_OPSET}"))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    initializers = {t.name: t for t in g.initializer}
    for t in g.initializer:
        types[t.name] = t.data_type
    constants = {n.output[0]: n for n in g.node if n.op_type == "Constant"}
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type

    def is_constant(name: str) -> bool:
        return name in initializers or name in constants

    def constant_value(name: str):
        if name in initializers:
            return numpy_helper.to_array(initializers[name]) if initializers[name].raw_data or \
                initializers[name].data_location != onnx.TensorProto.EXTERNAL else None
        node = constants.get(name)
        if node is not None:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    for i, n in enumerate(g.node):
        name = n.name or f"#{i} {n.op_type}"

        def bad(what: str, node_name=name, op=n.op_type) -> None:
            problems.append(Problem(node_name, op, what))

        if n.domain not in ("", "ai.onnx"):
            bad(f"operator domain {n.domain!r} is not ONNX's: TensorRT's parser has no such operator")
            continue
        rule = OPS.get(n.op_type)
        if rule is None:
            bad(f"{n.op_type} is not among the operators checked against {SOURCE}; add its row to "
                "sdar_export.trt_onnx_support.OPS if the table lists it as supported")
            continue
        for a in n.attribute:
            if a.name in rule.forbidden_attributes:
                bad(f"attribute {a.name!r} is unsupported")
        typed = range(len(n.input)) if rule.inputs == "all" else rule.inputs
        for k, x in enumerate(n.input):
            if not x:
                continue   # an omitted optional input
            allowed = rule.other.get(k)
            if allowed is None:
                allowed = rule.types if k in typed else INDEX if k in rule.index_inputs else None
            if allowed is not None:
                if x not in types:
                    bad(f"input {k} {x!r} has an unknown element type")
                elif _type_name(types[x]) not in allowed:
                    bad(f"input {k} {x!r} is {_type_name(types[x])}; the parser takes {', '.join(allowed)}")
            if k in rule.constant_inputs and not is_constant(x):
                bad(f"input {k} {x!r} must be a constant (an initializer)")
        if rule.outputs and n.output and n.output[0]:
            y = n.output[0]
            if y not in types:
                bad(f"output {y!r} has an unknown element type")
            elif _type_name(types[y]) not in rule.types:
                bad(f"output {y!r} is {_type_name(types[y])}; the parser takes {', '.join(rule.types)}")
        if n.op_type == "DequantizeLinear":
            if len(n.input) > 2 and n.input[2]:
                zp = constant_value(n.input[2])
                if zp is None or zp.any():
                    bad("x_zero_point must be zero (symmetric weights)")
            if n.input and types.get(n.input[0]) == 22:   # INT4: weight-only, blocked, 2-D constant
                w = initializers.get(n.input[0])
                if w is None:
                    bad("an INT4 input must be a weight (an initializer): INT4 is weight-only in TensorRT")
                elif len(w.dims) != 2:
                    bad(f"an INT4 weight must be 2-D for TensorRT's blocked quantization, got "
                        f"{len(w.dims)}-D")
    return problems


def check_graph(path: str | Path) -> list[Problem]:
    """Problems of the ONNX file at ``path`` (weights are not loaded)."""
    import onnx

    return check_model(onnx.load(str(path), load_external_data=False))


def require_supported(path: str | Path) -> None:
    """Raise :class:`UnsupportedGraph` naming every node TensorRT 10.3 does not document."""
    problems = check_graph(path)
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise UnsupportedGraph(f"{path}: TensorRT 10.3's ONNX parser does not document support for:"
                               f"\n  {shown}{more}\n(source: {SOURCE})")


def check_for_tensorrt(art: Path, graphs: dict, engine: str, log) -> None:
    """The trt graph against TensorRT 10.3's documented ONNX support: an export for --engine trt
    fails naming the node; otherwise a note says the artifact will not build on TensorRT."""
    if "trt" not in graphs:
        return
    try:
        require_supported(art / graphs["trt"]["file"])
    except UnsupportedGraph as e:
        detail = str(e).split(": ", 1)[1]   # without the staging directory's path
        if engine == "trt":
            from .errors import ExportError  # noqa: PLC0415

            raise ExportError(f"the trt graph cannot go to TensorRT: {detail}") from e
        log(f"note: TensorRT will not build this artifact: {detail}")
