"""``sdar-export``: HF SDAR checkpoint -> sdar_rt artifact (ONNX step graphs, optional TensorRT plans).

    sdar-export MODEL_DIR [-o OUT] [--fp16|--bf16] [--block-length 4] [--max-context N] [--batch 1]
                [--engine {onnx,trt}] [--opset 18] [--prefill-chunk N] [--skip-validate] [--force]
                [--int4 [--group-size 128] | --int8] [--symmetric|--asymmetric] [--quant-format F]
                [--quantize-embeddings] [--quantize-lm-head] [--lm-head-bits {4,8}] [--accuracy-level 4]
                [--awq [--calibration PROMPTS.txt]]
    sdar-export ARTIFACT_DIR --engine trt        # engines only, on the device, no torch import

The artifact is written into a temporary directory next to OUT and renamed into place at the end,
so an interrupted export never leaves a directory that looks like a valid artifact.
torch is imported only when a checkpoint is exported.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import EXPORTER_VERSION
from .errors import CheckpointError, ExportError

COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json")
DEFAULT_BLOCK_LENGTH = 4


def _manifest_api():
    """(format_version, validate) from sdar_rt.artifact when importable; local fallback otherwise."""
    try:
        from sdar_rt.artifact import MANIFEST_FORMAT_VERSION, validate_manifest  # noqa: PLC0415
        return MANIFEST_FORMAT_VERSION, validate_manifest
    except Exception:  # sdar_rt not installed / its extension not built: the exporter still works
        return 3, None   # keep in step with sdar_rt.artifact.MANIFEST_FORMAT_VERSION


def _console():
    try:
        from rich.console import Console  # noqa: PLC0415
        return Console(stderr=True, highlight=False)
    except ImportError:
        return None


class _Stages:
    """Progress on stderr: each stage and its steps; ``detail`` lines (every output's validation
    error) only with verbose. The summary tables come at the end (``_print_summary``)."""

    def __init__(self, quiet: bool, verbose: bool = False):
        self.quiet, self.console, self.times = quiet, (None if quiet else _console()), {}
        self.verbose = verbose and not quiet

    def log(self, msg: str):
        if self.quiet:
            return
        if self.console:
            self.console.print(f"  [dim]{msg}[/dim]")
        else:
            print("  " + msg, file=sys.stderr)

    def detail(self, msg: str):
        if self.verbose:
            self.log(msg)

    def run(self, name: str, fn, *a, **kw):
        if not self.quiet:
            if self.console:
                self.console.print(f"[bold cyan]▶ {name}[/bold cyan]")
            else:
                print(f"> {name}", file=sys.stderr)
        t = time.perf_counter()
        out = fn(*a, **kw)
        self.times[name] = time.perf_counter() - t
        self.log(f"done in {self.times[name]:.2f} s")
        return out


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def _check_options(block_length: int, max_context: int, batch: int, prefill_chunk: int, mpe: int,
                   opset: int) -> None:
    if block_length <= 0:
        raise ExportError(f"--block-length must be positive, got {block_length}")
    if max_context <= 0:
        raise ExportError(f"--max-context must be positive, got {max_context}")
    if max_context % block_length:
        raise ExportError(f"--block-length {block_length} does not divide --max-context {max_context}; "
                          f"use a max context that is a multiple of the block length, e.g. "
                          f"{max(block_length, max_context // block_length * block_length)}.")
    if max_context > mpe:
        raise ExportError(f"--max-context {max_context} exceeds the model's max_position_embeddings {mpe} "
                          "(config.json).")
    if batch <= 0:
        raise ExportError(f"--batch must be positive, got {batch}")
    if prefill_chunk <= 0 or prefill_chunk % block_length or prefill_chunk > max_context:
        raise ExportError(f"--prefill-chunk {prefill_chunk} must be a positive multiple of the block length "
                          f"{block_length} and at most --max-context {max_context}.")
    if opset < 17:
        raise ExportError(f"--opset {opset} is too old; use 17 or newer (18 is the default).")


def _disk_error(e: OSError, where: Path) -> ExportError:
    if e.errno == errno.ENOSPC:
        try:
            free = shutil.disk_usage(where).free / 2**30
            extra = f" ({free:.2f} GiB free there)"
        except OSError:
            extra = ""
        return ExportError(f"disk full while writing the artifact under {where}{extra}. Free space or choose "
                           "another output directory with -o; nothing was left at the output path.")
    return ExportError(f"cannot write the artifact under {where}: {e.strerror or e}. Check the path and its "
                       "permissions; nothing was left at the output path.")


def export(model_dir, out_dir=None, *, dtype: str = "float32", block_length: int = DEFAULT_BLOCK_LENGTH,
           max_context: int | None = None, batch: int = 1, engine: str = "onnx", opset: int = 18,
           prefill_chunk: int | None = None, skip_validate: bool = False, force: bool = False,
           workspace_mb: int = 2048, tolerance: tuple[float, float] | None = None, quiet: bool = False,
           quantize: str | None = None, group_size: int | None = None, symmetric: bool = True,
           quant_format: str | None = None, quantize_embeddings: bool = False, quantize_lm_head: bool = False,
           accuracy_level: int | None = None, awq: bool = False, calibration: str | Path | None = None,
           lm_head_bits: int | None = None, cpu_engine: bool = True, verbose: bool = False,
           _summary: dict | None = None,
           _external_data_threshold: int | None = None) -> Path:
    """Export ``model_dir`` (an HF SDAR checkpoint) to an artifact dir; returns its path.

    ``dtype``: float32 | float16 | bfloat16 (weights, activations between matmuls, K/V cache).
    ``engine="trt"`` also builds TensorRT plans (needs TensorRT); if ``model_dir`` is already an
    artifact, only the engines are built (no torch).
    ``quantize``: None | "int4" | "int8" weight-only quantization of the decoder linears (see
    sdar_export.quantize for the scheme and the graph forms, ``quant_format`` MatMulNBits | QDQ).
    ``awq``: activation-aware scales (sdar_export.awq) calibrated on ``calibration`` (a file, one
    prompt per line; None: a built-in set) before the RTN step.
    ``cpu_engine``: also write the native CPU engine's packed weights when it can run the export
    (sdar_export.cpu_weights).
    Output on stderr: the stages as they run and a summary (files, times, worst validation error per
    graph); ``verbose`` adds every output's validation error, ``quiet`` prints nothing.
    """
    model_dir = Path(model_dir)
    st = _Stages(quiet, verbose)
    if engine not in ("onnx", "trt"):
        raise ExportError(f"--engine must be 'onnx' or 'trt', got {engine!r}")
    if dtype in ("fp16", "fp32", "bf16"):
        dtype = {"fp16": "float16", "fp32": "float32", "bf16": "bfloat16"}[dtype]
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ExportError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    scheme = None
    if quantize is not None:
        from .quantize import DEFAULT_ACCURACY_LEVEL, make_scheme  # noqa: PLC0415  (no torch)
        level = DEFAULT_ACCURACY_LEVEL if accuracy_level is None else accuracy_level
        scheme = make_scheme(quantize, group_size, symmetric, quant_format, engine, quantize_embeddings,
                             quantize_lm_head, level, dtype, method="awq" if awq else "rtn",
                             lm_head_bits=lm_head_bits)
    elif (group_size is not None or not symmetric or quant_format is not None or quantize_embeddings
          or quantize_lm_head or accuracy_level is not None or awq or lm_head_bits is not None):
        raise ExportError("--group-size, --asymmetric, --quant-format, --quantize-embeddings, "
                          "--quantize-lm-head, --lm-head-bits, --accuracy-level and --awq only apply to a "
                          "quantized export; add --int4 or --int8.")
    if calibration is not None and not awq:
        raise ExportError("--calibration only applies with --awq (RTN needs no calibration); add --awq.")

    if is_artifact(model_dir):
        if engine != "trt":
            raise ExportError(f"{model_dir} is already an sdar-export artifact; pass --engine trt to build "
                              "TensorRT engines for it, or pass a checkpoint directory to export.")
        if quantize is not None:
            raise ExportError(f"{model_dir} is already an artifact; quantization options apply when "
                              "exporting a checkpoint.")
        _check_artifact_engine(model_dir, "trt")
        from .trt_build import build_engines  # noqa: PLC0415  (no torch)
        st.run("TensorRT engines", build_engines, model_dir, workspace_mb=workspace_mb,
               prefill_chunk=prefill_chunk, log=st.log)
        return model_dir
    if engine == "trt":  # fail before the expensive part
        from .trt_build import import_tensorrt  # noqa: PLC0415
        import_tensorrt()

    from .config import SDARConfig  # noqa: PLC0415
    cfg = SDARConfig.from_file(model_dir) if model_dir.is_dir() else None
    if cfg is None:
        raise CheckpointError(f"{model_dir}: checkpoint directory not found.")
    if cfg.autoregressive:
        # Even at block length 1 the runtime reads the logits of each masked position itself (no
        # shift), which an autoregressive model spends on the position after it.
        raise CheckpointError(
            f"{model_dir / 'config.json'}: model_type {cfg.declared_model_type!r} is a plain autoregressive "
            "model, not an SDAR block-diffusion model. sdar_rt fills masked positions from their own "
            "logits, which such a model was never trained to give (at any --block-length, 1 included), so "
            "its output would be wrong text. Export an SDAR checkpoint (model_type 'sdar' or 'sdar_moe'); "
            "if this checkpoint is an SDAR model whose config.json says otherwise, set its model_type to "
            f"{cfg.model_type!r}.")
    from .quantize import check_not_quantized  # noqa: PLC0415
    check_not_quantized(model_dir)
    if max_context is None:
        max_context = min(4096, cfg.max_position_embeddings)
        max_context -= max_context % block_length if block_length > 0 else 0
    if prefill_chunk is None:
        prefill_chunk = max(block_length, min(256, max_context) // max(block_length, 1) * block_length)
    _check_options(block_length, max_context, batch, prefill_chunk, cfg.max_position_embeddings, opset)
    calib_ids = None
    if awq:   # bad calibration input fails here, before the weights are loaded
        from .awq import calibration_ids  # noqa: PLC0415
        calib_ids = calibration_ids(model_dir, calibration, max_context, cfg.vocab_size)

    suffix = {'float32': 'fp32', 'float16': 'fp16', 'bfloat16': 'bf16'}[dtype]
    if scheme is not None:
        suffix += f"-{scheme.weights}"
    out = Path(out_dir) if out_dir is not None else model_dir.parent / f"{model_dir.name}-sdar_rt-{suffix}"
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to overwrite it (or choose another -o).")
    if out.resolve() == model_dir.resolve():
        raise ExportError(f"output {out} is the checkpoint directory itself; choose another -o.")

    from .checkpoint import load_checkpoint  # noqa: PLC0415  (torch from here on)
    ck = st.run("load checkpoint", load_checkpoint, model_dir, dtype=dtype)
    from .model import SDARModel  # noqa: PLC0415
    compute = "float32" if dtype == "bfloat16" else dtype   # see onnx_export docstring (ORT CPU)
    float_model, plan, rewrite, qcounts, awq_res = None, None, None, {}, None
    if scheme is not None:
        from .quantize import make_rewriter, quantize_weights  # noqa: PLC0415
        src = ck.weights
        if calib_ids is not None:
            from .awq import apply_awq  # noqa: PLC0415
            awq_res = st.run(f"AWQ calibration ({len(calib_ids)} prompts)", apply_awq, ck.weights, ck.config,
                             calib_ids, scheme, dtype, block_length, ck.mask_id, progress=st.log)
            src = awq_res.weights
        qweights, plan = st.run(f"quantize weights ({scheme.weights}, {scheme.method})", quantize_weights,
                                src, ck.config, scheme, dtype, progress=st.log)
        from .quantize import float_head_note  # noqa: PLC0415
        note = float_head_note(plan, qweights, dtype)
        if note:
            st.log(f"note: {note}")
        del src
        if awq_res is not None:
            awq_res.weights = {}   # the scaled float copy is not needed any more (large models)
        if not skip_validate:
            float_model = SDARModel(ck.config, ck.weights, dtype=dtype, compute_dtype=compute).eval()
        ck.weights = qweights
    model = st.run("build model", lambda: SDARModel(ck.config, ck.weights, dtype=dtype,
                                                     compute_dtype=compute).eval())
    del ck.weights
    if plan is not None:
        rewrite = make_rewriter(plan, model, dtype, qcounts)

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    summary = _summary if _summary is not None else {}
    try:
        try:
            from .onnx_export import export_all  # noqa: PLC0415
            # TensorRT's graph, unless the weights are in a form only ONNX Runtime runs (MatMulNBits)
            for_trt = scheme is None or scheme.format == "QDQ"
            graphs = st.run("export ONNX graphs", export_all, model, stage, block_length, batch=batch,
                            opset=opset, progress=st.log, rewrite=rewrite,
                            external_data_threshold=_external_data_threshold, trt=for_trt)
            _check_trt_graph(stage, graphs, engine, st)
            validation, tol, qval = {}, None, None
            if not skip_validate and plan is not None:
                from .quantize import validate_quantized  # noqa: PLC0415
                from .validate import TOLERANCES, format_report  # noqa: PLC0415
                tol = tolerance or TOLERANCES[dtype]
                qval, reports = st.run("validate with ONNX Runtime (vs dequantized network)",
                                       validate_quantized, model, float_model, stage, graphs, plan.scheme,
                                       block_length, max_context, batch, dtype, tol, progress=st.log)
                for line in format_report(reports).splitlines():
                    st.detail(line)
                vf = qval.get("vs_float_rel", {}).get("decode", {})
                if "logits" in vf:
                    st.log(f"quantization error (informational): decode logits rel err vs float "
                           f"{vf['logits']:.3e}, worst K/V {vf['max']:.3e}")
                validation = {k: r.errors for k, r in reports.items()}
            elif not skip_validate:
                from .validate import TOLERANCES, format_report, validate_artifact_graphs  # noqa: PLC0415
                tol = tolerance or TOLERANCES[dtype]
                reports = st.run("validate with ONNX Runtime", validate_artifact_graphs, model, stage, graphs,
                                 block_length, max_context, batch, dtype, tol, progress=st.log)
                for line in format_report(reports).splitlines():
                    st.detail(line)
                validation = {k: r.errors for k, r in reports.items()}
            cpu_section = None
            if cpu_engine:
                from .cpu_weights import export_cpu_weights  # noqa: PLC0415
                from .validate import TOLERANCES  # noqa: PLC0415
                cpu_tol = tolerance or TOLERANCES["float32"]
                cpu_section = export_cpu_weights(model, plan, stage, dtype, scheme, block_length, max_context,
                                                 batch, not skip_validate, cpu_tol, st)
            for f in COPIED_FILES:
                if (model_dir / f).exists():
                    shutil.copy2(model_dir / f, stage / f)
            manifest = build_manifest(ck, model, graphs, block_length, max_context, batch, dtype, compute,
                                      prefill_chunk, validation, tol, opset)
            if cpu_section is not None:
                manifest["cpu_engine"] = cpu_section
            if plan is not None:
                from .quantize import manifest_section  # noqa: PLC0415
                manifest["quantization"] = manifest_section(plan, dtype, qcounts.get("decode", {}))
                if awq_res is not None:
                    manifest["quantization"]["awq"] = awq_res.manifest()
                if qval is not None:
                    manifest["quantization"]["validation"] = qval
            write_manifest(stage, manifest)
            if engine == "trt":
                from .trt_build import build_engines  # noqa: PLC0415
                st.run("TensorRT engines", build_engines, stage, workspace_mb=workspace_mb,
                       prefill_chunk=prefill_chunk, log=st.log)
            _move_into_place(stage, out)
        except OSError as e:
            raise _disk_error(e, out.parent) from e
        except RuntimeError as e:  # torch / onnx report a full disk from C++ as RuntimeError
            if "No space left on device" in str(e):
                raise _disk_error(OSError(errno.ENOSPC, str(e)), out.parent) from e
            raise
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    summary.update(out=out, times=dict(st.times), validation=validation,
                   files={p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()})
    if not quiet:
        _print_summary(summary)
    return out


def _check_trt_graph(art: Path, graphs: dict, engine: str, st: _Stages) -> None:
    """The trt graph against TensorRT 10.3's documented ONNX support: an export for --engine trt
    fails naming the node; otherwise a note says the artifact will not build on TensorRT."""
    if "trt" not in graphs:
        return
    from .trt_onnx_support import UnsupportedGraph, require_supported  # noqa: PLC0415
    try:
        require_supported(art / graphs["trt"]["file"])
    except UnsupportedGraph as e:
        detail = str(e).split(": ", 1)[1]   # without the staging directory's path
        if engine == "trt":
            raise ExportError(f"the trt graph cannot go to TensorRT: {detail}") from e
        st.log(f"note: TensorRT will not build this artifact: {detail}")


def _check_artifact_engine(artifact_dir: Path, engine: str) -> None:
    """Refuse to build engines for an artifact whose graphs the engine cannot run (no torch)."""
    try:
        from sdar_rt.artifact import check_engine_support  # noqa: PLC0415
    except Exception:  # sdar_rt not importable: read the manifest directly
        check_engine_support = None
    try:
        manifest = json.loads((artifact_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{artifact_dir / 'manifest.json'}: cannot be read ({e})") from e
    if check_engine_support is not None:
        try:
            check_engine_support(manifest, engine, str(artifact_dir / "manifest.json"))
        except ValueError as e:
            raise ExportError(str(e)) from e
    elif (manifest.get("quantization") or {}).get("format") == "MatMulNBits" and engine == "trt":
        raise ExportError(f"{artifact_dir}: MatMulNBits graphs cannot be built by TensorRT; re-export with "
                          "--quant-format QDQ (or --engine trt).")


def _move_into_place(stage: Path, out: Path) -> None:
    """Rename the finished staging dir to ``out``; an existing ``out`` (--force) is moved aside
    first and deleted only after the new artifact is in place."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    try:
        os.replace(stage, out)
    except OSError:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def build_manifest(ck, model, graphs: dict, block_length: int, max_context: int, batch: int, dtype: str,
                   compute_dtype: str, prefill_chunk: int, validation: dict, tolerance, opset: int) -> dict:
    cfg = ck.config
    version, _ = _manifest_api()
    mdl = {"num_layers": cfg.num_hidden_layers, "num_heads": cfg.num_attention_heads,
           "num_kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
           "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
           "max_position_embeddings": cfg.max_position_embeddings}
    if cfg.is_moe:
        mdl.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok)
    return {
        "format": "sdar_rt.artifact",
        "format_version": version,
        "exporter_version": EXPORTER_VERSION,
        "source": {"model_type": cfg.model_type, "checkpoint_sha256": ck.sha256,
                   "checkpoint_dtype": cfg.torch_dtype},
        "model": mdl,
        "block_length": block_length,
        "max_context": max_context,
        "batch": batch,
        "dtype": dtype,
        "compute_dtype": compute_dtype,
        "prefill_chunk": prefill_chunk,
        "opset": opset,
        "tokens": {"mask_id": ck.mask_id, "eos_ids": ck.eos_ids, "pad_id": ck.pad_id},
        "graphs": graphs,
        "engines": [],
        "validation": validation,
        "validation_tolerance": ({"atol": tolerance[0], "rtol": tolerance[1]} if tolerance else None),
        "tokenizer": {"files": ["tokenizer.json", "tokenizer_config.json"]},
    }


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    _, validate = _manifest_api()
    path = Path(out_dir) / "manifest.json"
    if validate is not None:
        validate(manifest, str(path))
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def _print_summary(s: dict) -> None:
    c = _console()
    lines = [f"artifact: {s['out']}"]
    if c is not None:
        from rich.table import Table  # noqa: PLC0415
        t = Table(title="files")
        t.add_column("file")
        t.add_column("size", justify="right")
        for f, n in s["files"].items():
            t.add_row(f, _human(n))
        c.print(t)
        if s["validation"]:
            t3 = Table(title="validation vs PyTorch (all within tolerance)")
            t3.add_column("graph")
            t3.add_column("output")
            t3.add_column("max abs err", justify="right")
            for g, errs in s["validation"].items():
                worst = max(errs, key=errs.get) if errs else "-"
                t3.add_row(g, f"{worst} (worst of {len(errs)})", f"{errs.get(worst, 0):.2e}")
            c.print(t3)
        else:
            c.print("[yellow]validation skipped[/yellow]")
        # The stages' times were printed as they ran; here the total.
        c.print(f"artifact {s['out']} written in {sum(s['times'].values()):.1f} s", highlight=False,
                soft_wrap=True)
        return
    print("\n".join(lines), file=sys.stderr)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdar-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="HF SDAR checkpoint dir, or an existing artifact with --engine trt")
    p.add_argument("-o", "--output", default=None,
                   help="artifact directory (default: MODEL_DIR-sdar_rt-DTYPE)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fp16", action="store_true", help="float16 weights/activations/KV (logits fp32)")
    g.add_argument("--bf16", action="store_true", help="bfloat16 weights/KV (logits fp32)")
    p.add_argument("--block-length", type=int, default=DEFAULT_BLOCK_LENGTH,
                   help="tokens decoded together per block, fixed in the graphs: the block length the "
                        f"model was trained with (default {DEFAULT_BLOCK_LENGTH})")
    p.add_argument("--max-context", type=int, default=None,
                   help="prompt + output tokens the KV cache holds, a multiple of the block length "
                        "(default: min(4096, max_position_embeddings))")
    p.add_argument("--batch", type=int, default=1,
                   help="rows per forward, fixed in the graphs: prompts decoded together, or samples of "
                        "one prompt (num_samples); default 1")
    p.add_argument("--engine", choices=["onnx", "trt"], default="onnx",
                   help="onnx (default): ONNX graphs, run by ONNX Runtime anywhere; trt: also build "
                        "TensorRT plans (needs TensorRT and a GPU; run it on the target device)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset of the graphs (default 18; 17 or newer)")
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="largest prefill chunk in tokens (multiple of block length; default 256)")
    p.add_argument("--workspace-mb", type=int, default=2048, help="TensorRT builder workspace limit")
    p.add_argument("--skip-validate", action="store_true",
                   help="do not compare the graphs with PyTorch on ONNX Runtime (faster; an exporter "
                        "error then goes unnoticed)")
    p.add_argument("--tolerance", type=float, nargs=2, metavar=("ATOL", "RTOL"), default=None,
                   help="validation tolerance: max|ort - torch| <= ATOL + RTOL * max|torch| "
                        "(default per dtype, see sdar_export.validate)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    p.add_argument("--no-cpu-engine", dest="cpu_engine", action="store_false",
                   help="leave out the native CPU engine's weight file (written by default for dense "
                        "float32 / --int4 / --int8 exports)")
    q = p.add_argument_group("weight-only quantization (sdar_export.quantize)")
    qb = q.add_mutually_exclusive_group()
    qb.add_argument("--int4", action="store_true", help="4-bit weights, groups of --group-size (default 128)")
    qb.add_argument("--int8", action="store_true", help="8-bit weights, per output channel by default")
    q.add_argument("--group-size", type=int, default=None,
                   help="input channels per scale (power of two >= 16; must divide every hidden dim)")
    qs = q.add_mutually_exclusive_group()
    qs.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                    help="zero point 0 (default; the only form TensorRT 10.3 runs)")
    qs.add_argument("--asymmetric", dest="symmetric", action="store_false", help="per-group zero points")
    q.add_argument("--quant-format", choices=["MatMulNBits", "QDQ"], default=None,
                   help="graph form: MatMulNBits (ONNX Runtime, default) or QDQ (opset-21 "
                        "DequantizeLinear -> MatMul, for TensorRT; default with --engine trt)")
    q.add_argument("--quantize-embeddings", action="store_true", help="also quantize the embedding table")
    q.add_argument("--quantize-lm-head", action="store_true", help="also quantize the LM head")
    q.add_argument("--lm-head-bits", type=int, default=None, choices=[4, 8],
                   help="quantize the LM head with these bits (implies --quantize-lm-head; e.g. an 8-bit "
                        "head for --int4)")
    q.add_argument("--accuracy-level", type=int, default=None, choices=[0, 1, 2, 3, 4],
                   help="MatMulNBits accuracy_level (default 4: int8 activations, the fast CPU kernel)")
    q.add_argument("--awq", action="store_true",
                   help="activation-aware weight scaling before rounding, calibrated through the float "
                        "network (sdar_export.awq)")
    q.add_argument("--calibration", default=None, metavar="FILE",
                   help="AWQ calibration prompts, one per line (\\n = newline); default: a built-in set")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", "--quiet", action="store_true", help="print only the artifact path")
    out.add_argument("-v", "--verbose", action="store_true",
                     help="also print every output's validation error (default: the worst per graph)")
    return p


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    dtype = "float16" if a.fp16 else "bfloat16" if a.bf16 else "float32"
    try:
        out = export(a.model_dir, a.output, dtype=dtype, block_length=a.block_length,
                     max_context=a.max_context, batch=a.batch, engine=a.engine, opset=a.opset,
                     prefill_chunk=a.prefill_chunk, skip_validate=a.skip_validate, force=a.force,
                     workspace_mb=a.workspace_mb, quiet=a.quiet,
                     tolerance=tuple(a.tolerance) if a.tolerance else None,
                     quantize="int4" if a.int4 else "int8" if a.int8 else None, group_size=a.group_size,
                     symmetric=a.symmetric, quant_format=a.quant_format,
                     quantize_embeddings=a.quantize_embeddings, quantize_lm_head=a.quantize_lm_head,
                     accuracy_level=a.accuracy_level, awq=a.awq, calibration=a.calibration,
                     lm_head_bits=a.lm_head_bits, cpu_engine=a.cpu_engine, verbose=a.verbose)
    except (CheckpointError, ExportError) as e:
        print(f"sdar-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdar-export: interrupted; no artifact was written.", file=sys.stderr)
        return 130
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
