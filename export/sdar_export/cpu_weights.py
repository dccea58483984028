"""The native CPU engine's weight file: the network's weights packed for its kernels, one file.

Written by default for every artifact the engine can run (dense models, float32 dtype, with or
without --int4 / --int8): the runtime then runs on CPU through ``sdar_rt``'s C++ engine, no Python
per step, and ``engine="auto"`` picks it there. ``--no-cpu-engine`` leaves it out (the artifact
is smaller; a float32 model's file is as large as its weights).

``cpu_weights.bin``: an 8-byte magic and the format version, then every tensor at a 64-byte
aligned offset in the layouts of ``cpu_pack`` (``runtime/cpu/packed_matrix.h``). The runtime
memory-maps it and reads the weights in place. manifest.json's ``cpu_engine`` section lists the
tensors (kind, shape, group, byte ranges), the model's dimensions and the validation:

* ``embed``, ``lm_head`` (the same bytes when the embeddings are tied and float), ``final_norm``,
  ``rope_inv_freq``;
* per layer ``layers.{i}.``: ``input_norm``, ``post_norm``, ``q_norm``, ``k_norm`` (float32 vectors),
  ``qkv`` (q, k and v rows in one matrix), ``o``, ``gate_up`` (gate rows, then up rows), ``down``.

Quantized weights are the exporter's own (sdar_export.quantize: the same codes, scales and zero
points as the ONNX graphs), repacked; float weights are float32.

Validation runs the engine (``sdar_rt._core``) against the PyTorch network on the cases of
sdar_export.validate (empty cache, one block, near max_context; prefill at L and 3L tokens, decode,
fused), comparing the logits and the K/V rows the step wrote, at the float32 tolerance
(atol 1e-4 + rtol 1e-5 * max|ref|). Quantized weights are checked with float activations against
the network with the dequantized weights (this proves the packing, like the ONNX level-0 check);
with int8 activations, what the engine runs by default, the relative errors are recorded
(informational: the activation rounding, like ONNX Runtime's accuracy level 4). The cache rows past
the step must be left untouched.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .cpu_pack import PackedArrays, pack_f32, pack_qtensor
from .errors import ExportError, ValidationError
from .options import BF16_RUNS_ON
from .reference import StepCase

FILE_NAME = "cpu_weights.bin"
FORMAT_VERSION = 1
MAGIC = b"SDARCPUW"
ALIGN = 64
_HEADER = MAGIC + struct.pack("<II", FORMAT_VERSION, 0)


def unsupported_reason(cfg, dtype: str, scheme=None) -> str | None:
    """Why the CPU engine cannot run this export (None: it can)."""
    if getattr(cfg, "is_moe", False):
        return "the CPU engine runs dense models (model_type sdar); this MoE model runs on ONNX Runtime"
    if dtype == "bfloat16":
        return BF16_RUNS_ON
    if dtype != "float32":
        return (f"the CPU engine computes in float32 with a float32 K/V cache; this {dtype} artifact runs on "
                "ONNX Runtime (export without --fp16, with --int4 or --int8 if wanted, for the CPU engine)")
    if scheme is not None and scheme.group_size is not None and scheme.group_size % 32:
        return (f"the CPU engine reads quantized weights in groups that are multiples of 32; --group-size "
                f"{scheme.group_size} runs on ONNX Runtime")
    return None


class _Writer:
    def __init__(self, f):
        self.f = f
        self.offset = len(_HEADER)
        f.write(_HEADER)

    def add(self, a: np.ndarray) -> list[int]:
        return self.add_parts([a])

    def add_parts(self, parts) -> list[int]:
        """One array written from consecutive pieces (a large matrix packed a block of rows at a time)."""
        pad = -self.offset % ALIGN
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        at = self.offset
        for a in parts:
            data = memoryview(np.ascontiguousarray(a)).cast("B")
            self.f.write(data)
            self.offset += data.nbytes
        return [at, self.offset - at]


def _np(t) -> np.ndarray:
    return t.detach().float().contiguous().numpy()


def _concat_q(qts: list):
    from .quantize import QTensor

    first = qts[0]
    zp = None if first.zp is None else np.concatenate([q.zp for q in qts])
    return QTensor(np.concatenate([q.q for q in qts]), np.concatenate([q.scale for q in qts]), zp, first.bits,
                   first.block)


def _matrix(w: _Writer, parts: list[str], tensors, source) -> dict:
    """The rows of ``parts`` (HF weight names) in one matrix, written: quantized when the plan has
    them, else float32 from the weight source."""
    quantized = [p in tensors for p in parts]
    if all(quantized):
        qts = [tensors[p] for p in parts]
        return _entry(w, pack_qtensor(qts[0] if len(parts) == 1 else _concat_q(qts)))
    if any(quantized):
        raise ExportError(f"CPU engine weights: {parts} are partly quantized (exporter bug)")
    f = np.concatenate([_np(source.get(p)) for p in parts]) if len(parts) > 1 else _np(source.get(parts[0]))
    return _f32_entry(w, f)


def _entry(w: _Writer, p: PackedArrays) -> dict:
    e = {"kind": p.format, "rows": p.rows, "cols": p.cols}
    if p.format != "f32":
        e.update(group=p.group, symmetric=p.symmetric)
    for name, a in p.arrays():
        e[name] = w.add(a)
    return e


_F32_BLOCK_ROWS = 8192   # rows packed per piece (a multiple of the panel height): bounds the copy


def _f32_entry(w: _Writer, f: np.ndarray) -> dict:
    """A float matrix [N, K] in the f32 panel layout, packed a block of rows at a time (panels are
    consecutive in the layout, so the pieces are the whole packed matrix)."""
    rows, cols = f.shape
    pieces = (pack_f32(f[r:r + _F32_BLOCK_ROWS]).data for r in range(0, rows, _F32_BLOCK_ROWS))
    return {"kind": "f32", "rows": rows, "cols": cols, "data": w.add_parts(pieces)}


def _vector(w: _Writer, t) -> dict:
    a = _np(t).reshape(-1).astype(np.float32)
    return {"kind": "vector", "rows": int(a.size), "data": w.add(a)}


def model_dims(cfg) -> dict:
    return {"hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_heads": cfg.num_attention_heads, "num_kv_heads": cfg.num_key_value_heads,
            "head_dim": cfg.head_dim, "num_layers": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size,
            "rms_norm_eps": cfg.rms_norm_eps}


def write_cpu_weights(source, plan, out_dir: str | Path, progress=None) -> dict:
    """Writes ``cpu_weights.bin`` from a weight source (sdar_export.weight_sources, float32) and its
    quantization plan (or None), one matrix at a time; returns the manifest's ``cpu_engine`` section
    (without validation)."""
    from .model import rope_inv_freq  # noqa: PLC0415

    cfg = source.config
    qt = plan.tensors if plan is not None else {}
    tensors: dict[str, dict] = {}
    path = Path(out_dir) / FILE_NAME
    with open(path, "wb") as f:
        w = _Writer(f)
        embed_q = plan is not None and plan.embed_name is not None
        tensors["embed"] = _matrix(w, ["model.embed_tokens.weight"], qt, source)
        if "lm_head.weight" in qt:
            tensors["lm_head"] = _entry(w, pack_qtensor(qt["lm_head.weight"]))
        elif source.tied and not embed_q:
            tensors["lm_head"] = dict(tensors["embed"])          # the same bytes
        else:
            tensors["lm_head"] = _f32_entry(w, _np(source.get("lm_head.weight")))
        tensors["final_norm"] = _vector(w, source.get("model.norm.weight"))
        tensors["rope_inv_freq"] = _vector(w, rope_inv_freq(cfg))
        for i in range(cfg.num_hidden_layers):
            hf = f"model.layers.{i}."
            p = f"layers.{i}."
            if cfg.layer_is_moe(i):
                raise ExportError(f"CPU engine weights: layer {i} has a sparse (MoE) MLP; the engine runs "
                                  "dense models")
            tensors[p + "input_norm"] = _vector(w, source.get(hf + "input_layernorm.weight"))
            tensors[p + "post_norm"] = _vector(w, source.get(hf + "post_attention_layernorm.weight"))
            tensors[p + "q_norm"] = _vector(w, source.get(hf + "self_attn.q_norm.weight"))
            tensors[p + "k_norm"] = _vector(w, source.get(hf + "self_attn.k_norm.weight"))
            attn = [hf + f"self_attn.{n}_proj.weight" for n in ("q", "k", "v")]
            tensors[p + "qkv"] = _matrix(w, attn, qt, source)
            tensors[p + "o"] = _matrix(w, [hf + "self_attn.o_proj.weight"], qt, source)
            tensors[p + "gate_up"] = _matrix(w, [hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"], qt,
                                             source)
            tensors[p + "down"] = _matrix(w, [hf + "mlp.down_proj.weight"], qt, source)
            if progress and (i % 8 == 0 or i == cfg.num_hidden_layers - 1):
                progress(f"packed layer {i + 1}/{cfg.num_hidden_layers}")
        size = w.offset
    scheme = plan.scheme if plan is not None else None
    return {"file": FILE_NAME, "format_version": FORMAT_VERSION, "bytes": size,
            "weights": scheme.weights if scheme is not None else "float32",
            "model": model_dims(cfg), "tensors": tensors}


# --------------------------------------------------------------------------- validation


def _engine(out_dir: Path, section: dict, activations: str):
    from sdar_rt import _core  # noqa: PLC0415

    cpu_model = _core.CpuModel(str(out_dir / section["file"]), section["model"], section["tensors"])
    return _core.CpuEngine(cpu_model, threads=1, activations=activations)


def _cases(block_length: int, max_context: int) -> list[tuple[str, StepCase]]:
    """(kind, step): prefill at L and 3L tokens, decode (L), fused (2L); empty cache, one block, and the
    longest cache that fits below max_context. The engine reads the cache rows [0, past_len)."""
    from .validate import validation_cases  # noqa: PLC0415

    L = block_length
    out = []
    for kind, tokens in (("prefill", None), ("decode", L), ("fused", 2 * L)):
        for T, P, past_len in validation_cases(kind, L, max_context, tokens):
            far = (max_context - T) // L * L
            start = past_len if past_len == P else far
            out.append((kind, StepCase(T, start, start, 0 if kind == "prefill" else L, 1000 + len(out))))
    return out


def _run_cases(reference, cfg, out_dir: Path, section: dict, block_length: int, max_context: int, batch: int,
               activations: str) -> tuple[dict, dict]:
    """Max abs error and max |ref| per output over every case."""
    import torch  # noqa: PLC0415
    from sdar_rt import _core  # noqa: PLC0415

    L, n = block_length, cfg.num_hidden_layers
    kinds = {"prefill": _core.GraphKind.Prefill, "decode": _core.GraphKind.Decode,
             "fused": _core.GraphKind.Fused}
    errors: dict[str, float] = {}
    ref_max: dict[str, float] = {}
    cases = _cases(L, max_context)
    expected = reference.run([c for _, c in cases])
    engine = _engine(out_dir, section, activations)
    shape = (max_context, batch, cfg.num_key_value_heads, cfg.head_dim)
    ids = np.zeros((batch, max(3 * L, 2 * L)), dtype=np.int64)
    logits = np.zeros((batch, L, cfg.vocab_size), dtype=np.float32)
    keys = [np.zeros(shape, np.float32) for _ in range(n)]
    values = [np.zeros(shape, np.float32) for _ in range(n)]
    engine.bind_arrays(ids, logits, keys, values, L)

    def note(name: str, got: np.ndarray, ref: np.ndarray) -> None:
        err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
        errors[name] = max(errors.get(name, 0.0), err if np.isfinite(err) else float("inf"))
        ref_max[name] = max(ref_max.get(name, 0.0), float(np.max(np.abs(ref))) if ref.size else 0.0)

    for (kind, case), want in zip(cases, expected, strict=True):
        T, past_len = case.tokens, case.past_len
        ids.reshape(-1)[: batch * T] = case.ids(batch, cfg.vocab_size).numpy().reshape(-1)  # [B, T] first
        for i in range(n):
            pk, pv = case.past(i, batch, cfg.num_key_value_heads, cfg.head_dim, torch.float32)
            keys[i][:past_len], values[i][:past_len] = pk.numpy(), pv.numpy()
            keys[i][past_len:] = 7.0                               # sentinel: rows the step must not touch
            values[i][past_len:] = 7.0
        engine.run(kinds[kind], past_len, T)
        for i in range(n):
            note(f"present_key_{i}", keys[i][past_len:past_len + T], want.keys[i])
            note(f"present_value_{i}", values[i][past_len:past_len + T], want.values[i])
            for c in (keys[i], values[i]):
                if not (c[past_len + T:] == 7.0).all():
                    raise ValidationError(f"CPU engine: a {kind} step of {T} tokens at past_len {past_len} "
                                          "wrote cache rows past its own (exporter or engine bug)")
        if kind != "prefill":
            note("logits", logits, want.logits)
    return errors, ref_max


def validate_cpu_weights(reference, out_dir: str | Path, section: dict, block_length: int, max_context: int,
                         batch: int, tolerance: tuple[float, float], quantized: bool, progress=None) -> dict:
    """Runs the engine against ``reference`` (an SDARModel or a reference of sdar_export.reference: the
    network with the dequantized weights when quantized); raises ValidationError outside the
    tolerance; returns the manifest's validation record."""
    try:
        from sdar_rt import _core  # noqa: F401, PLC0415
    except ImportError as e:
        if progress:
            progress(f"CPU engine not validated: sdar_rt is not importable here ({e})")
        return {"skipped": "sdar_rt was not importable at export time"}
    from .validate import as_reference  # noqa: PLC0415

    out_dir = Path(out_dir)
    atol, rtol = tolerance
    reference = as_reference(reference, block_length, batch)
    cfg = reference.config
    errors, ref_max = _run_cases(reference, cfg, out_dir, section, block_length, max_context, batch,
                                 "float" if quantized else "int8")
    fails = [f"{k}: max abs error {e:.3g} exceeds {atol + rtol * ref_max[k]:.3g}"
             for k, e in errors.items() if not e <= atol + rtol * ref_max[k]]
    if fails:
        raise ValidationError("the CPU engine disagrees with the PyTorch network:\n  " + "\n  ".join(fails)
                              + "\nThis is an exporter or engine bug (or a corrupted file); export with "
                                "--no-cpu-engine to leave the CPU engine out.")
    record = {"max_abs": errors, "tolerance": {"atol": atol, "rtol": rtol},
              "activations": "float" if quantized else "float32 weights"}
    if progress:
        progress(f"CPU engine vs PyTorch: logits max abs {errors.get('logits', 0):.3e}, "
                 f"worst K/V {max(v for k, v in errors.items() if k != 'logits'):.3e}")
    if quantized:
        e8, m8 = _run_cases(reference, cfg, out_dir, section, block_length, max_context, batch, "int8")
        rel = {k: e / m8[k] if m8[k] else e for k, e in e8.items()}
        record["int8_activations_rel"] = {"logits": rel["logits"], "max": max(rel.values())}
        if progress:
            progress(f"CPU engine with int8 activations (informational): logits rel err "
                     f"{record['int8_activations_rel']['logits']:.3e}")
    return record


def export_cpu_weights(source, reference, plan, out_dir: Path, dtype: str, scheme, block_length: int,
                       max_context: int, batch: int, validate: bool, tolerance: tuple[float, float],
                       stages) -> dict | None:
    """The export step: writes (from ``source``) and validates (against ``reference``) the weight file;
    returns the manifest section, or None (with a note) when the engine cannot run this export."""
    reason = unsupported_reason(source.config, dtype, scheme)
    if reason is not None:
        stages.log(f"note: no CPU engine weights: {reason}")
        return None
    section = stages.run("CPU engine weights", write_cpu_weights, source, plan, out_dir, progress=stages.log)
    stages.log(f"{FILE_NAME}: {section['bytes'] / 2**20:.1f} MiB")
    if validate:
        section["validation"] = stages.run("validate the CPU engine", validate_cpu_weights, reference,
                                           out_dir, section, block_length, max_context, batch, tolerance,
                                           plan is not None, progress=stages.log)
    return section
