"""Run an exported graph in ONNX Runtime piece by piece, so validation never holds all its weights.

ONNX Runtime's CPU provider keeps a graph's weights in memory while a session is open, and for a
float16 graph it holds them as float32 (it has no float16 MatMul on most CPUs: about 2x the file,
and over 4x while the session starts, measured with onnxruntime 1.32). A 1.7B float16 graph would
need more memory than the whole export is allowed. So the graph's nodes, in an order where each is
computed just before its first use, are cut into consecutive segments of at most ``budget`` bytes of
weights each; a segment is saved as
a graph of its own (its initializers still point into the artifact's weights file), run for every
case, and closed before the next one opens. The values a later segment reads from an earlier one
are passed along as ONNX Runtime values. Every node of the graph runs exactly once per case, on
the same inputs as in one session; a graph whose weights fit the budget is one segment.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .stages import release_freed_memory
from .weight_store import ELEMENT_BYTES, tensor_bytes

_ELEM = {"tensor(float)": 1, "tensor(uint8)": 2, "tensor(int8)": 3, "tensor(int32)": 6, "tensor(int64)": 7,
         "tensor(bool)": 9, "tensor(float16)": 10, "tensor(double)": 11, "tensor(bfloat16)": 16}


def _demand_order(nodes: list, outputs: list[str]) -> list:
    """The nodes in the order the graph outputs demand them: a depth-first walk from each output in
    turn, a node right after the producers of its inputs. Every value is then computed shortly before
    its first use (a layer's view of its past K/V with that layer, not at the start of the graph),
    so few values cross from one segment to a later one."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    done: set[int] = set()
    order = []
    roots = [producer[o] for o in outputs if o in producer] + list(range(len(nodes)))
    for root in roots:
        stack = [(root, 0)]
        while stack:
            i, k = stack.pop()
            if i in done:
                continue
            inputs = nodes[i].input
            while k < len(inputs) and (inputs[k] not in producer or producer[inputs[k]] in done):
                k += 1
            if k < len(inputs):
                stack.append((i, k + 1))
                stack.append((producer[inputs[k]], 0))
                continue
            done.add(i)
            order.append(nodes[i])
    return order


def _units(order: list, inits: set[str]) -> list[list]:
    """``order`` as units that are never cut apart: each node that reads a graph input (or a value
    computed from one), preceded by the nodes computed from initializers alone that it is the first
    to read (a Constant, the tied head's Transpose of the embedding table). Such a value then never
    has to cross from one segment to a later one (a transposed vocabulary table is hundreds of MB)."""
    constant: dict[str, object] = {}        # output -> its constant-only producer
    for n in order:
        if all(not x or x in inits or x in constant for x in n.input):
            constant.update((o, n) for o in n.output if o)
    placed: set[int] = set()
    units: list[list] = []

    def place(n, unit: list) -> None:
        if id(n) in placed:
            return
        placed.add(id(n))
        for x in n.input:
            if x in constant:
                place(constant[x], unit)
        unit.append(n)

    for n in order:
        if not any(o in constant for o in n.output):
            units.append([])
            place(n, units[-1])
    rest: list = []
    for n in order:      # constants that only graph outputs read
        place(n, rest)
    return units + ([rest] if rest else [])


def plan_segments(m, budget: int) -> list[list]:
    """The graph's nodes cut into consecutive lists, each reading at most ``budget`` bytes of
    initializers (a unit reading more on its own is a segment by itself)."""
    inits = {t.name: tensor_bytes(t) for t in m.graph.initializer}
    order = _demand_order(list(m.graph.node), [o.name for o in m.graph.output])
    segments: list[list] = [[]]
    used: set[str] = set()
    total = 0
    for unit in _units(order, set(inits)):
        reads = {x for n in unit for x in n.input if x in inits}
        extra = sum(inits[x] for x in reads - used)
        if segments[-1] and total + extra > budget:
            segments.append([])
            used, total = set(), 0
            extra = sum(inits[x] for x in reads)
        segments[-1].extend(unit)
        used |= reads
        total += extra
    return segments


def ort_value_to_numpy(v) -> np.ndarray:
    """An OrtValue as a numpy array (bfloat16 as float32)."""
    if v.data_type() != "tensor(bfloat16)":
        return np.array(v.numpy())
    shape = v.shape()
    n = int(np.prod(shape)) if shape else 1
    raw = np.frombuffer(ctypes.string_at(v.data_ptr(), 2 * n), np.uint16).reshape(shape)
    return (raw.astype(np.uint32) << 16).view(np.float32)


def copy_ort_value(v):
    """An OrtValue with its own copy of ``v``'s data (any element type)."""
    import onnxruntime as ort

    shape = v.shape()
    elem = _ELEM[v.data_type()]
    n = int(np.prod(shape)) if shape else 1
    data = ctypes.string_at(v.data_ptr(), n * ELEMENT_BYTES[elem]) if n else b""
    raw = np.frombuffer(data, np.uint8).copy()
    if elem == 9:
        a = raw.view(np.bool_)
    else:
        a = raw.view({1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64,
                      10: np.float16, 11: np.float64, 16: np.uint16}[elem])
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.reshape(shape), elem)


def numpy_to_ort_value(a: np.ndarray, bfloat16: bool = False):
    import onnxruntime as ort

    a = np.ascontiguousarray(a)
    if bfloat16:   # numpy has no bfloat16: the bits travel as uint16
        return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a.view(np.uint16), 16)
    return ort.OrtValue.ortvalue_from_numpy(a)


class SegmentedGraph:
    """A graph file run as consecutive segments (see the module docstring)."""

    def __init__(self, path: str | Path, budget: int, session_options=None):
        import onnx

        self.path = Path(path)
        self.model = onnx.load(str(self.path), load_external_data=False)
        self.options = session_options
        self.segments = plan_segments(self.model, budget)
        self.outputs = [o.name for o in self.model.graph.output]
        self.inputs = {i.name: i for i in self.model.graph.input}

    def run(self, cases: list, feeds: Callable[[object, list[str]], dict]) -> list[dict[str, np.ndarray]]:
        """Run every case; ``feeds(case, names)`` returns OrtValues for the graph inputs ``names``.
        Returns each case's graph outputs as numpy arrays (bfloat16 as float32)."""
        import onnxruntime as ort

        g = self.model.graph
        inits = {t.name: t for t in g.initializer}
        produced = [{o for n in seg for o in n.output if o} for seg in self.segments]
        reads = [{x for n in seg for x in n.input if x} for seg in self.segments]
        later_reads = [set().union(*reads[k + 1:]) for k in range(len(self.segments))]
        wanted = set(self.outputs)
        stash: list[dict] = [{} for _ in cases]
        results: list[dict[str, np.ndarray]] = [{} for _ in cases]
        types: dict[str, int] = {}
        for k, seg in enumerate(self.segments):
            outs = sorted(o for o in produced[k] if o in wanted or o in later_reads[k])
            ins = sorted(x for x in reads[k] if x not in produced[k] and x not in inits)
            graph_ins = [x for x in ins if x in self.inputs]
            path = self._write_segment(k, seg, ins, outs, inits, types)
            try:
                sess = ort.InferenceSession(str(path), self.options, providers=["CPUExecutionProvider"])
            finally:
                path.unlink(missing_ok=True)
            for c, case in enumerate(cases):
                feed = dict(feeds(case, graph_ins)) if graph_ins else {}
                feed.update({x: stash[c][x] for x in ins if x not in self.inputs})
                values = sess.run_with_ort_values(outs, feed)
                for name, v in zip(outs, values, strict=True):
                    types[name] = _ELEM[v.data_type()]
                    if name in wanted:
                        results[c][name] = ort_value_to_numpy(v)
                    if name in later_reads[k]:
                        # a copy: an OrtValue the session allocated keeps its memory arena, and with
                        # it the session's weights, alive after the session closes
                        stash[c][name] = copy_ort_value(v)
                for name in [x for x in stash[c] if x not in later_reads[k]]:
                    del stash[c][name]
            del sess
            release_freed_memory()
        return results

    def _write_segment(self, k: int, nodes: list, ins: list[str], outs: list[str], inits: dict, types: dict):
        import onnx
        from onnx import helper

        g = self.model.graph
        inputs = [self.inputs[x] if x in self.inputs else helper.make_tensor_value_info(x, types[x], None)
                  for x in ins]
        declared = {o.name: o for o in g.output}
        outputs = [declared.get(x) or onnx.ValueInfoProto(name=x) for x in outs]
        used = {x for n in nodes for x in n.input}
        graph = helper.make_graph(nodes, f"{g.name or 'graph'}_segment_{k}", inputs, outputs,
                                  [inits[x] for x in inits if x in used])
        seg = helper.make_model(graph, opset_imports=list(self.model.opset_import))
        seg.ir_version = self.model.ir_version
        path = self.path.with_name(f".segment_{k}_{self.path.name}")
        onnx.save_model(seg, str(path))
        return path
