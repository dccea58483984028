"""Numerical validation of exported step graphs: ONNX Runtime CPU vs the PyTorch model.

Each graph runs on random inputs at three context sizes: empty cache (P = 0), one block
(P = past_len = L), and a long, non-block-aligned bound cache near max_context
(P = max_context - T - 3, past_len = the largest multiple of L <= P - L, so some bound rows are
past past_len and must be masked). Prefill is also run at a second token count (3L) to exercise
its dynamic axis, and TensorRT's ``trt`` graph at L, 2L and 3L tokens (each kind it serves). The
cache rows hold random finite values, masked rows included.

Every output is compared; the max abs error per output (over all cases) goes in the manifest.

Tolerances (checked per output as max|ort - torch| <= atol + rtol * max|torch|):
  float32: atol 1e-4, rtol 1e-5. Both sides compute in fp32 with different kernels / summation
           orders; measured errors on the tiny checkpoints are <= ~7e-6 on logits of magnitude ~12
           and ~2e-6 on K/V, so 1e-4 is >10x margin yet far below anything that can change an
           argmax here (logit gaps ~ 0.1-1) — a wrong mask, RoPE position or layer gives errors O(1).
  float16: atol 3e-2, rtol 1e-2. fp16 has a 2^-11 relative step: one rounding of a value of
           magnitude 12 is ~6e-3, and K/V of magnitude ~4 round at ~2e-3. The two sides accumulate
           matmuls differently and round intermediates (q/k/v/MLP activations, each feeding the
           next layer) at different points, so a few half-ulps per layer accumulate; measured
           max errors are ~1e-2 on logits, ~2e-3 on K/V. A real bug is still O(1).
  bfloat16: atol 1e-1, rtol 2e-2. bf16 storage has a 2^-8 relative step (8x fp16's); weights and
           K/V are rounded identically on both sides (compute is fp32), so differences come from
           the re-rounding of the K/V outputs (one bf16 ulp, ~3e-2 at magnitude 4) and fp32 noise
           propagated through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ValidationError
from .ort_segments import SegmentedGraph, numpy_to_ort_value
from .reference import ModelReference, ReferenceNetwork, StepCase, StepOutputs
from .stages import release_freed_memory

TOLERANCES = {"float32": (1e-4, 1e-5), "float16": (3e-2, 1e-2), "bfloat16": (1e-1, 2e-2)}


# Weights per ONNX Runtime session while validating (sdar_export.ort_segments): a sixteenth of the
# model, between 16 and 256 MiB. A float16 segment costs ONNX Runtime's CPU provider up to ~4x its
# weights while its session starts (measured), so validation stays well under the model's size.
SEGMENT_BYTES = 256 << 20
MIN_SEGMENT_BYTES = 16 << 20


def segment_bytes_for(model_bytes: int) -> int:
    return max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, model_bytes // 16))


@dataclass
class ValidationReport:
    graph: str
    errors: dict[str, float] = field(default_factory=dict)        # output -> max abs error
    rel_errors: dict[str, float] = field(default_factory=dict)    # output -> max abs err / max|ref|
    cases: list[tuple[int, int, int]] = field(default_factory=list)  # (T, P, past_len)
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def validation_cases(kind: str, block_length: int, max_context: int, tokens: int | None):
    L = block_length
    if tokens is not None:
        counts = [tokens]
    elif kind == "trt":   # TensorRT's graph serves prefill chunks, decode (L) and fused (2L)
        counts = [L, 2 * L, 3 * L]
    else:
        counts = [L, 3 * L]
    cases = []
    for t in counts:
        if t > max_context:
            continue
        cases.append((t, 0, 0))
        if L + t <= max_context:
            cases.append((t, L, L))
        p = max_context - t - 3
        if p > L:
            past_len = ((p - L) // L) * L
            cases.append((t, p, past_len))
    return cases


def step_cases(block_length: int, max_context: int) -> list[tuple[int, int, int, int]]:
    """(T, P, past_len, num_logits) cases of the ONNX Runtime step graph: each use it serves."""
    L = block_length
    uses = (("prefill", None, 0), ("decode", L, L), ("fused", 2 * L, L))
    return [(*c, nl) for kind, t, nl in uses for c in validation_cases(kind, L, max_context, t)]


def graph_cases(kind: str, num_logits: int | str, tokens: int | None, block_length: int, max_context: int,
                seed: int = 0) -> list[StepCase]:
    """The steps a graph is validated on. ``num_logits == "num_logits"``: the step graph, run at every
    use it serves (:func:`step_cases`)."""
    if num_logits == "num_logits":
        raw = step_cases(block_length, max_context)
    else:
        raw = [(*c, num_logits) for c in validation_cases(kind, block_length, max_context, tokens)]
    return [StepCase(T, P, pl, nl, seed + 17 * ci + P) for ci, (T, P, pl, nl) in enumerate(raw)]


class CachedReference:
    """A reference (sdar_export.reference) that computes each case once, however many graphs ask."""

    def __init__(self, reference):
        self.reference, self.config = reference, reference.config
        self.done: dict[StepCase, StepOutputs] = {}

    def run(self, cases: list[StepCase], progress=None) -> list[StepOutputs]:
        todo = list(dict.fromkeys(c for c in cases if c not in self.done))
        if todo:
            self.done.update(zip(todo, self.reference.run(todo, progress=progress), strict=True))
            release_freed_memory()   # the layers' weights, before ONNX Runtime's sessions need memory
        return [self.done[c] for c in cases]


def as_reference(model_or_reference, block_length: int, batch: int):
    """An ``SDARModel`` (in memory) or a reference object with ``run(cases)``, cached."""
    if isinstance(model_or_reference, CachedReference):
        return model_or_reference
    if hasattr(model_or_reference, "run"):
        return CachedReference(model_or_reference)
    return CachedReference(ModelReference(model_or_reference, block_length, batch))


def _bf16_bits(t) -> np.ndarray:
    """A bfloat16 torch tensor's bits as uint16 (numpy has no bfloat16)."""
    import torch

    return t.view(torch.int16).numpy().view(np.uint16)


def session_options(session_config: dict | None, prepack: bool):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = False   # memory goes back when freed (validation holds one piece at a time)
    if not prepack:   # ONNX Runtime's packed copy of each float matmul weight: memory, no other effect
        so.add_session_config_entry("session.disable_prepacking", "1")
    for k, v in (session_config or {}).items():
        so.add_session_config_entry(k, str(v))
    return so


def case_feeds(cfg, batch: int, dtype: str):
    """``feeds(case, names)`` for sdar_export.ort_segments: each graph input of one case."""
    from .model import to_torch_dtype  # noqa: PLC0415

    sd = to_torch_dtype(dtype)
    bf16 = dtype == "bfloat16"

    def feeds(case: StepCase, names: list[str]) -> dict:
        out, layers = {}, {}
        for name in names:
            if name == "input_ids":
                out[name] = numpy_to_ort_value(case.ids(batch, cfg.vocab_size).numpy())
            elif name == "past_len":
                out[name] = numpy_to_ort_value(np.array([case.past_len], np.int64))
            elif name == "num_logits":
                out[name] = numpy_to_ort_value(np.array([case.num_logits], np.int64))
            else:
                kind, layer = name.rsplit("_", 1)
                i = int(layer)
                if i not in layers:
                    layers[i] = case.past(i, batch, cfg.num_key_value_heads, cfg.head_dim, sd)
                t = layers[i][0 if kind == "past_key" else 1]
                out[name] = numpy_to_ort_value(_bf16_bits(t) if bf16 else t.numpy(), bfloat16=bf16)
        return out

    return feeds


def validate_graph(reference, path: str | Path, kind: str, num_logits: int | str, tokens: int | None,
                   block_length: int, max_context: int, batch: int = 1, dtype: str = "float32",
                   tolerance: tuple[float, float] | None = None, seed: int = 0,
                   session_config: dict | None = None, segment_bytes: int = SEGMENT_BYTES,
                   progress=None) -> ValidationReport:
    """Compare one ONNX graph with the PyTorch network; returns a report (does not raise).

    ``reference``: an ``SDARModel`` or a reference (sdar_export.reference) over the same weights.
    ``session_config``: ONNX Runtime session config entries (e.g. the accuracy level of quantized
    matmuls, see sdar_export.quantize). ``num_logits == "num_logits"``: the step graph, run at
    every use it serves (:func:`step_cases`). The graph runs in segments of ``segment_bytes`` of
    weights (sdar_export.ort_segments).
    """
    atol, rtol = tolerance or TOLERANCES[dtype]
    ref = as_reference(reference, block_length, batch)
    cases = graph_cases(kind, num_logits, tokens, block_length, max_context, seed)
    expected = ref.run(cases)
    rep = ValidationReport(graph=kind)
    graph = SegmentedGraph(path, segment_bytes)
    if progress:
        pieces = len(graph.segments)
        progress(f"validating {Path(path).name}" + (f" in {pieces} pieces" if pieces > 1 else ""))
    quantized = any(n.op_type == "MatMulNBits" for n in graph.model.graph.node)
    graph.options = session_options(session_config, prepack=quantized)
    cfg = ref.config
    try:
        got_all = graph.run(cases, case_feeds(cfg, batch, dtype))
    except Exception as e:  # onnxruntime raises its own exception types
        rep.failures.append(f"{kind}: ONNX Runtime failed: {e}")
        return rep
    ref_max: dict[str, float] = {}
    for case, want, got in zip(cases, expected, got_all, strict=True):
        rep.cases.append((case.tokens, case.past_rows, case.past_len))
        named = want.named()
        if "logits" in got and "logits" not in named:   # the step graph's logits, 0 rows here
            named["logits"] = np.zeros((batch, 0, cfg.vocab_size), np.float32)
        for nm, r in named.items():
            if nm not in got:
                rep.failures.append(f"{kind}: output {nm!r} missing from the graph")
                continue
            g = got[nm].astype(np.float32)
            if g.shape != r.shape:
                rep.failures.append(f"{kind}: output {nm!r} has shape {list(g.shape)}, expected "
                                    f"{list(r.shape)} (T={case.tokens}, P={case.past_rows})")
                continue
            err = float(np.max(np.abs(g - r))) if r.size else 0.0
            if not np.isfinite(err) or np.isnan(g).any():
                err = float("inf")
            rep.errors[nm] = max(rep.errors.get(nm, 0.0), err)
            ref_max[nm] = max(ref_max.get(nm, 0.0), float(np.max(np.abs(r))) if r.size else 0.0)
    for nm, err in rep.errors.items():
        scale = ref_max[nm]
        rep.rel_errors[nm] = err / scale if scale > 0 else err
        tol = atol + rtol * scale
        if not err <= tol:
            rep.failures.append(f"{kind}: output {nm!r} max abs error {err:.3g} exceeds tolerance "
                                f"{tol:.3g} (atol {atol:g} + rtol {rtol:g} x max|ref| {scale:.3g})")
    return rep


def validate_artifact_graphs(reference, out_dir: str | Path, graphs: dict, block_length: int,
                             max_context: int, batch: int, dtype: str, tolerance=None,
                             raise_on_failure: bool = True, progress=None, files: dict | None = None,
                             session_config: dict | None = None,
                             what: str = "the PyTorch model",
                             segment_bytes: int = SEGMENT_BYTES) -> dict[str, ValidationReport]:
    """Validate every graph; ``files`` maps a graph name to another file to run in its place. The
    reference runs once, for the cases of all the graphs together; then one graph at a time runs in
    ONNX Runtime."""
    ref = as_reference(reference, block_length, batch)
    every = []
    for kind, g in graphs.items():
        every += graph_cases(kind, g["logits"], g["tokens"], block_length, max_context)
    ref.run(every, progress=progress)
    reports = {}
    for kind, g in graphs.items():
        f = (files or {}).get(kind, g["file"])
        reports[kind] = validate_graph(ref, Path(out_dir) / f, kind, g["logits"], g["tokens"],
                                       block_length, max_context, batch, dtype, tolerance,
                                       session_config=session_config, segment_bytes=segment_bytes,
                                       progress=progress)
    fails = [f for r in reports.values() for f in r.failures]
    if fails and raise_on_failure:
        raise ValidationError(f"exported graph(s) disagree with {what}:\n  " + "\n  ".join(fails)
                              + "\nThis is an exporter bug (or a corrupted file); rerun with "
                                "--skip-validate only to inspect the artifact.")
    return reports


def validate_export(reference, checkpoint_weights, plan, graphs: dict, directory: Path, opts, stages,
                    checkpoint_bytes: int):
    """The export's validation stage: ONNX Runtime against PyTorch for every graph (``reference``: the
    network the graphs compute; for a quantized export also against the float network of
    ``checkpoint_weights``); returns (the manifest's validation errors, the tolerance, the
    quantization's validation record or None)."""
    tol = opts.tolerance or TOLERANCES[opts.dtype]
    args = (directory, graphs, opts.block_length, opts.max_context, opts.batch, opts.dtype, tol)
    segments = segment_bytes_for(checkpoint_bytes)
    quant = None
    if plan is None:
        reports = stages.run("validate with ONNX Runtime", validate_artifact_graphs, reference, *args,
                             progress=stages.log, segment_bytes=segments)
    else:
        from .quantize import validate_quantized  # noqa: PLC0415

        float_network = ReferenceNetwork(checkpoint_weights, opts.dtype, opts.compute_dtype,
                                         opts.block_length, opts.batch)
        quant, reports = stages.run("validate with ONNX Runtime (vs dequantized network)", validate_quantized,
                                    reference, float_network, directory, graphs, plan.scheme,
                                    opts.block_length, opts.max_context, opts.batch, opts.dtype, tol,
                                    progress=stages.log, segment_bytes=segments)
        vf = quant.get("vs_float_rel", {}).get("decode", {})
        if "logits" in vf:
            stages.log(f"quantization error (informational): decode logits rel err vs float "
                       f"{vf['logits']:.3e}, worst K/V {vf['max']:.3e}")
    for line in format_report(reports).splitlines():
        stages.detail(line)
    return {k: r.errors for k, r in reports.items()}, tol, quant


def network_reference(network, opts) -> CachedReference:
    """The PyTorch network the graphs compute, run layer by layer (computed once per step)."""
    return CachedReference(ReferenceNetwork(network, opts.dtype, opts.compute_dtype, opts.block_length,
                                            opts.batch))


def format_report(reports: dict[str, ValidationReport]) -> str:
    lines = []
    for kind, r in reports.items():
        for nm, e in r.errors.items():
            lines.append(f"{kind:8s} {nm:18s} max abs {e:.3e}  rel {r.rel_errors.get(nm, 0):.3e}")
    return "\n".join(lines)
