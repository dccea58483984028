"""ONNX Runtime engine: runs the artifact's step graphs on buffers owned by the C++ core.

With the artifact's ``step`` graph (dynamic T, a ``num_logits`` input): one ``InferenceSession``
for every graph kind, so the weights (and ONNX Runtime's prepacked copies of them) are in memory
once, and one ``IOBinding`` per kind on it (prefill binds ``num_logits`` = 0, decode and fused
bind L). Without it (an artifact whose step graph was left out): one session per graph.

A run rebinds only what moved: ``input_ids`` when its length changes, the ``past_*`` inputs and
``present_*`` outputs when ``past_len`` changes (the past is the cache prefix bound in place, the
present is bound to the rows right after it, so the graph writes the new K/V straight into the
cache). ``past_len`` is a numpy int64[1] bound once by address and updated in place; ``logits``
is bound once.
"""

from __future__ import annotations

import time

import numpy as np

from . import _core
from .artifact import STEP_GRAPH, Artifact, ArtifactError

_NP_DTYPES = {"float32": np.float32, "float16": np.float16}


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise RuntimeError("onnxruntime is not installed: pip install onnxruntime") from exc
    return ort


class _Graph:
    """Session + binding of one graph kind and what is currently bound."""

    def __init__(self, session, num_logits: int | None = None):
        self.session = session
        self.binding = session.io_binding()
        self.inputs = {i.name for i in session.get_inputs()}
        self.outputs = {o.name for o in session.get_outputs()}
        # step graph: the logits rows this kind asks for, bound by address once
        self.num_logits = None if num_logits is None else np.array([num_logits], dtype=np.int64)
        self.bound_tokens = -1
        self.bound_past = -1


class OrtEngine(_core.Engine):
    """``_core.Engine`` backed by ONNX Runtime's CPU provider, on the host decoding loop's buffers."""

    def __init__(self, artifact: Artifact, *, device: str = "cpu", threads: int | None = None):
        super().__init__()
        ort = _import_ort()
        self.artifact = artifact
        dtype = artifact.dtype
        if dtype not in _NP_DTYPES:
            from sdar_export.options import BF16_RUNS_ON

            raise ArtifactError(f"{artifact.path}: the ONNX Runtime engine cannot run it: {BF16_RUNS_ON}")
        self.np_dtype = _NP_DTYPES[dtype]
        artifact.check_engine("ort")
        if device == "cuda":
            # The engine binds the host decoding loop's buffers: ONNX Runtime's CUDA provider would
            # copy the whole KV cache prefix to the GPU and the new K/V and logits back on every
            # step. Binding the device loop's buffers instead is not written (it could not be
            # tested without a GPU), so the GPU path is TensorRT's.
            raise ValueError(
                "device='cuda' is not available with ONNX Runtime (it would copy the KV cache to the GPU "
                "and back on every step); on a GPU use TensorRT: build the plan with `sdar-export "
                f"{artifact.path} --engine trt` and use engine='trt' (or 'auto'), or use device='cpu'"
            )
        if device != "cpu":
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        providers = ["CPUExecutionProvider"]
        if threads is not None and (not isinstance(threads, int) or threads < 0):
            raise ValueError(f"threads must be a non-negative integer, got {threads!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        quant = artifact.quantization
        if quant and quant.get("format") == "QDQ":
            # ORT fuses DequantizeLinear(int4) -> MatMul into MatMulNBits; 4 = int8 activations (fast)
            level = quant.get("accuracy_level")
            options.add_session_config_entry(
                "session.qdq_matmulnbits_accuracy_level", str(4 if level is None else level)
            )
        self._graphs: dict[_core.GraphKind, _Graph] = {}
        kinds = {
            "prefill": _core.GraphKind.Prefill,
            "decode": _core.GraphKind.Decode,
            "fused": _core.GraphKind.Fused,
        }

        def load(name: str):
            path = artifact.graph_path(name)
            try:
                return ort.InferenceSession(str(path), sess_options=options, providers=providers)
            except Exception as exc:
                raise ArtifactError(
                    f"{path}: ONNX Runtime cannot load the graph ({exc}); re-export it"
                ) from exc

        self.shared_session = artifact.has_graph(STEP_GRAPH)
        if self.shared_session:
            step = load(STEP_GRAPH)
            L = artifact.block_length
            for name, kind in kinds.items():
                if artifact.has_graph(name):
                    self._graphs[kind] = _Graph(step, 0 if name == "prefill" else L)
        else:
            for name, kind in kinds.items():
                if artifact.has_graph(name):
                    self._graphs[kind] = _Graph(load(name))
        self._past_len = np.zeros(1, dtype=np.int64)
        self._b = None
        self.run_count = 0
        self.ort_seconds = 0.0  # inside run_with_iobinding
        self.python_seconds = 0.0  # inside run(), total (rebinding + ORT)

    @property
    def has_fused(self) -> bool:
        return _core.GraphKind.Fused in self._graphs

    def bind(self, b) -> None:
        self._b = b
        self._cache_shape = (b.batch, b.num_kv_heads, b.head_dim)
        n = b.num_layers
        for kind, g in self._graphs.items():
            for i in range(n):
                for name in (f"present_key_{i}", f"present_value_{i}"):
                    if name not in g.outputs:
                        raise ArtifactError(
                            f"{self.artifact.path}: graph {_core.graph_name(kind)} has no output "
                            f"{name!r}; re-export with sdar-export"
                        )
            if "past_len" in g.inputs:
                g.binding.bind_input("past_len", "cpu", 0, np.int64, (1,), self._past_len.ctypes.data)
            if g.num_logits is not None:
                g.binding.bind_input("num_logits", "cpu", 0, np.int64, (1,), g.num_logits.ctypes.data)
                if kind == _core.GraphKind.Prefill:
                    # zero logits rows: an empty output, bound once (nothing is written)
                    g.binding.bind_output(
                        "logits", "cpu", 0, np.float32, (b.batch, 0, b.vocab_size), b.logits
                    )
            if kind != _core.GraphKind.Prefill:
                if "logits" not in g.outputs:
                    raise ArtifactError(
                        f"{self.artifact.path}: graph {_core.graph_name(kind)} has no 'logits' "
                        "output; re-export with sdar-export"
                    )
                g.binding.bind_output(
                    "logits", "cpu", 0, np.float32, (b.batch, b.block_length, b.vocab_size), b.logits
                )

    def _rebind(self, g: _Graph, past_len: int, tokens: int) -> None:
        b = self._b
        if g.bound_tokens != tokens:
            if "input_ids" in g.inputs:
                g.binding.bind_input("input_ids", "cpu", 0, np.int64, (b.batch, tokens), b.input_ids)
            g.bound_tokens = tokens
            g.bound_past = -1  # present shapes depend on tokens
        if g.bound_past != past_len:
            dt = self.np_dtype
            past_shape = (past_len, *self._cache_shape)
            present_shape = (tokens, *self._cache_shape)
            offset = past_len * b.row_bytes
            for i in range(b.num_layers):
                k, v = b.key_cache[i], b.value_cache[i]
                if f"past_key_{i}" in g.inputs:
                    g.binding.bind_input(f"past_key_{i}", "cpu", 0, dt, past_shape, k)
                if f"past_value_{i}" in g.inputs:
                    g.binding.bind_input(f"past_value_{i}", "cpu", 0, dt, past_shape, v)
                g.binding.bind_output(f"present_key_{i}", "cpu", 0, dt, present_shape, k + offset)
                g.binding.bind_output(f"present_value_{i}", "cpu", 0, dt, present_shape, v + offset)
            g.bound_past = past_len

    def run(self, kind, past_len: int, tokens: int) -> None:
        t0 = time.perf_counter()
        g = self._graphs.get(kind)
        if g is None:
            raise RuntimeError(f"the artifact has no {_core.graph_name(kind)} graph")
        self._past_len[0] = past_len
        self._rebind(g, past_len, tokens)
        t1 = time.perf_counter()
        g.session.run_with_iobinding(g.binding)
        t2 = time.perf_counter()
        self.run_count += 1
        self.ort_seconds += t2 - t1
        self.python_seconds += t2 - t0

    def timing(self) -> dict:
        """Cumulative counters: runs, seconds inside ORT, seconds inside run() (rebinding included)."""
        return {
            "runs": self.run_count,
            "ort_seconds": self.ort_seconds,
            "python_seconds": self.python_seconds,
        }
