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

TOLERANCES = {"float32": (1e-4, 1e-5), "float16": (3e-2, 1e-2), "bfloat16": (1e-1, 2e-2)}


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


def _to_numpy(t):
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)   # raw bf16 bits
    return t.numpy()


def _bf16_bits_to_f32(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32)


def run_ort(session, feeds: dict, out_shapes: dict[str, tuple], bf16: bool) -> dict[str, np.ndarray]:
    """Run a session; bf16 tensors travel as uint16 bit patterns (numpy has no bfloat16)."""
    import onnxruntime as ort

    if not bf16:
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))
    b = session.io_binding()
    for name, a in feeds.items():
        if a.dtype == np.uint16:
            b.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(a, 16))
        else:
            b.bind_cpu_input(name, a)
    outs = {}
    for o in session.get_outputs():
        if o.type == "tensor(bfloat16)":
            buf = np.zeros(out_shapes[o.name], np.uint16)
            b.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(buf, 16))
            outs[o.name] = buf
        else:
            buf = np.zeros(out_shapes[o.name], np.float32)
            b.bind_ortvalue_output(o.name, ort.OrtValue.ortvalue_from_numpy(buf))
            outs[o.name] = buf
    session.run_with_iobinding(b)
    return outs


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


def validate_graph(model, path: str | Path, kind: str, num_logits: int | str, tokens: int | None,
                   block_length: int, max_context: int, batch: int = 1, dtype: str = "float32",
                   tolerance: tuple[float, float] | None = None, seed: int = 0,
                   session_config: dict | None = None) -> ValidationReport:
    """Compare one ONNX graph with the PyTorch model; returns a report (does not raise).

    ``session_config``: ONNX Runtime session config entries (e.g. the accuracy level of quantized
    matmuls, see sdar_export.quantize). ``num_logits == "num_logits"``: the step graph, run at
    every use it serves (:func:`step_cases`).
    """
    import onnxruntime as ort
    import torch

    from .onnx_export import example_inputs, input_names, output_names

    atol, rtol = tolerance or TOLERANCES[dtype]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    for k, v in (session_config or {}).items():
        so.add_session_config_entry(k, str(v))
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    n = model.num_layers
    declared = {i.name for i in sess.get_inputs()}
    rep = ValidationReport(graph=kind)
    ref_max: dict[str, float] = {}
    bf16 = dtype == "bfloat16"
    step = num_logits == "num_logits"
    if step:
        cases = step_cases(block_length, max_context)
    else:
        cases = [(*c, num_logits) for c in validation_cases(kind, block_length, max_context, tokens)]
    for ci, (T, P, pl, nl) in enumerate(cases):
        args = example_inputs(model, batch, T, P, pl, seed=seed + 17 * ci + P,
                              num_logits=nl if step else None)
        past = args[3:] if step else args[2:]
        with torch.no_grad():
            logits, ks, vs = model(args[0], args[1], list(past[0::2]), list(past[1::2]), block_length, nl)
        if step and logits is None:   # the step graph always has the output, with 0 rows here
            logits = torch.zeros(batch, 0, model.config.vocab_size)
        refs = ([logits] if logits is not None else []) + [x for kv in zip(ks, vs, strict=True) for x in kv]
        onames = output_names(n, logits is not None)
        ref = {nm: r.float().numpy() for nm, r in zip(onames, refs, strict=True)}
        feeds = {nm: _to_numpy(a) for nm, a in zip(input_names(n, step), args, strict=True) if nm in declared}
        try:
            got = run_ort(sess, feeds, {k: v.shape for k, v in ref.items()}, bf16)
        except Exception as e:  # onnxruntime raises its own exception types
            rep.failures.append(f"{kind}: ONNX Runtime failed at T={T}, P={P}, past_len={pl}: {e}")
            return rep
        rep.cases.append((T, P, pl))
        for nm in onames:
            if nm not in got:
                rep.failures.append(f"{kind}: output {nm!r} missing from the graph")
                continue
            g = got[nm]
            g = _bf16_bits_to_f32(g) if g.dtype == np.uint16 else g.astype(np.float32)
            r = ref[nm]
            if g.shape != r.shape:
                rep.failures.append(f"{kind}: output {nm!r} has shape {list(g.shape)}, expected "
                                    f"{list(r.shape)} (T={T}, P={P})")
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


def validate_artifact_graphs(model, out_dir: str | Path, graphs: dict, block_length: int, max_context: int,
                             batch: int, dtype: str, tolerance=None, raise_on_failure: bool = True,
                             progress=None, files: dict | None = None, session_config: dict | None = None,
                             what: str = "the PyTorch model") -> dict[str, ValidationReport]:
    """Validate every graph; ``files`` maps a graph name to another file to run in its place."""
    reports = {}
    for kind, g in graphs.items():
        f = (files or {}).get(kind, g["file"])
        if progress:
            progress(f"validating {f}")
        reports[kind] = validate_graph(model, Path(out_dir) / f, kind, g["logits"], g["tokens"],
                                       block_length, max_context, batch, dtype, tolerance,
                                       session_config=session_config)
    fails = [f for r in reports.values() for f in r.failures]
    if fails and raise_on_failure:
        raise ValidationError(f"exported graph(s) disagree with {what}:\n  " + "\n  ".join(fails)
                              + "\nThis is an exporter bug (or a corrupted file); rerun with "
                                "--skip-validate only to inspect the artifact.")
    return reports


def format_report(reports: dict[str, ValidationReport]) -> str:
    lines = []
    for kind, r in reports.items():
        for nm, e in r.errors.items():
            lines.append(f"{kind:8s} {nm:18s} max abs {e:.3e}  rel {r.rel_errors.get(nm, 0):.3e}")
    return "\n".join(lines)
