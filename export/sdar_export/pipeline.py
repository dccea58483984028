"""``sdar-export`` as a pipeline: HF SDAR checkpoint -> sdar_rt artifact, one stage after another.

    resolve source -> load checkpoint -> quantize (RTN / AWQ) -> build network -> export graphs
    -> validate -> pack engine weights -> write manifest -> build engines -> move into place

Each stage lives in the module that owns its job; :func:`export_checkpoint` is the list of them.
Memory is bounded by design: no stage holds the network's weights as a whole. The checkpoint is read
tensor by tensor (sdar_export.checkpoint.CheckpointWeights); AWQ scales and quantized weights are
applied as each tensor is read (sdar_export.weight_sources) while the quantized codes wait on disk;
the graphs are traced from a skeleton without weights and every weight is written once, into the
one file all graphs share (sdar_export.graph_weights); validation builds the PyTorch network one
layer at a time (sdar_export.reference) and runs the graphs in ONNX Runtime in pieces
(sdar_export.ort_segments). Each stage's time and peak memory are recorded (``--report``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .errors import ExportError
from .options import ExportOptions
from .stages import StageRecord, Stages


@dataclass
class ExportResult:
    path: Path
    stages: list[StageRecord]
    files: dict[str, int] = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    checkpoint_bytes: int | None = None
    weights_bytes: int | None = None    # the network's weights as the artifact stores them

    @property
    def times(self) -> dict[str, float]:
        return {r.name: r.seconds for r in self.stages}

    @property
    def peak_rss(self) -> int:
        """The highest peak resident memory of any stage."""
        return max((r.peak_rss for r in self.stages), default=0)


def export(model_dir, out_dir=None, **options) -> Path:
    """Export ``model_dir`` (an HF SDAR checkpoint) to an artifact dir; returns its path. The keyword
    arguments are :class:`sdar_export.options.ExportOptions`' fields (``skip_validate=True`` is
    ``validate=False``). If ``model_dir`` is already an artifact, ``engine="trt"`` builds only its
    TensorRT engines (no torch)."""
    if "skip_validate" in options:
        options["validate"] = not options.pop("skip_validate")
    return run_export(ExportOptions(model_dir=model_dir, out_dir=out_dir, **options)).path


def run_export(opts: ExportOptions) -> ExportResult:
    """The export, stage by stage; returns the artifact's path and what each stage took."""
    from .report import print_summary, write_report  # noqa: PLC0415

    stages = Stages(opts.quiet, opts.verbose)
    if is_artifact(opts.model_dir):      # resolve source: an exported artifact gets its engines only
        return build_engines_only(opts, stages)
    result = export_checkpoint(opts, stages)
    if opts.report is not None:
        write_report(opts.report, result)
    if not opts.quiet:
        print_summary(result)
    return result


def is_artifact(path: str | Path) -> bool:
    return (Path(path) / "manifest.json").is_file()


def export_checkpoint(opts: ExportOptions, stages: Stages) -> ExportResult:
    """The stages of a checkpoint's export (the cheap checks first: nothing is read that a bad option
    would waste)."""
    from .checkpoint import read_exportable_config  # noqa: PLC0415

    if opts.engine == "trt":
        from .trt_build import import_tensorrt  # noqa: PLC0415
        import_tensorrt()
    cfg = read_exportable_config(opts.model_dir)
    opts = opts.for_config(cfg)
    if opts.engine == "trt":
        from .trt_build import check_trt_precision  # noqa: PLC0415
        check_trt_precision(opts.dtype, {"weights": opts.quantize}, str(opts.model_dir))
    prompts = calibration_prompts(opts, cfg)
    out = opts.checked_output_dir()

    from .awq import AwqScaled, apply_awq  # noqa: PLC0415  (torch from here on)
    from .checkpoint import load_checkpoint  # noqa: PLC0415
    from .cpu_weights import export_cpu_weights  # noqa: PLC0415
    from .manifest import build_manifest, copy_checkpoint_files, write_manifest  # noqa: PLC0415
    from .model import graph_skeleton  # noqa: PLC0415
    from .onnx_export import export_artifact_graphs  # noqa: PLC0415
    from .quantize import SpilledTensors, float_head_note, manifest_section, quantize_source  # noqa: PLC0415
    from .staging import Staging  # noqa: PLC0415
    from .trt_onnx_support import check_for_tensorrt  # noqa: PLC0415
    from .validate import TOLERANCES, network_reference, validate_export  # noqa: PLC0415
    from .weight_sources import Dequantized, stored_bytes  # noqa: PLC0415

    ck = stages.run("load checkpoint", load_checkpoint, opts.model_dir, dtype=opts.dtype, with_weights="lazy")
    checkpoint_bytes = sum(f.stat().st_size for f in ck.files)
    scheme = opts.scheme()
    with Staging(out) as staging:
        source, awq, plan = ck.weights, None, None
        if prompts is not None:
            awq = stages.run(f"AWQ calibration ({len(prompts)} prompts)", apply_awq, source, cfg, prompts,
                             scheme, opts.dtype, opts.block_length, ck.mask_id, progress=stages.log)
            source = AwqScaled(source, awq.choices)
        if scheme is not None:
            plan = stages.run(f"quantize weights ({scheme.weights}, {scheme.method})", quantize_source,
                              source, cfg, scheme, opts.dtype, SpilledTensors(staging.scratch / "quantized"),
                              progress=stages.log)
            note = float_head_note(plan, source, opts.dtype)
            if note:
                stages.log(f"note: {note}")
        network = Dequantized(source, plan) if plan is not None else source
        skeleton = stages.run("build network", graph_skeleton, cfg, opts.dtype, opts.compute_dtype)
        graphs, counts = stages.run("export ONNX graphs", export_artifact_graphs, skeleton, network, plan,
                                    staging.dir, opts, stages.log)
        check_for_tensorrt(staging.dir, graphs, opts.engine, stages.log)
        reference = network_reference(network, opts)
        validation, tolerance, quant_validation = {}, None, None
        if opts.validate:
            validation, tolerance, quant_validation = validate_export(
                reference, ck.weights, plan, graphs, staging.dir, opts, stages, checkpoint_bytes)
        cpu_section = None
        if opts.cpu_engine:
            cpu_section = export_cpu_weights(network, reference, plan, staging.dir, opts.dtype, scheme,
                                             opts.block_length, opts.max_context, opts.batch, opts.validate,
                                             opts.tolerance or TOLERANCES["float32"], stages)
        copy_checkpoint_files(opts.model_dir, staging.dir)
        quant_section = (manifest_section(plan, opts.dtype, counts.get("decode", {}), awq, quant_validation)
                         if plan is not None else None)
        write_manifest(staging.dir, build_manifest(ck, opts, graphs, validation, tolerance, cpu_section,
                                                   quant_section))
        if opts.engine == "trt":
            from .trt_build import build_engines  # noqa: PLC0415
            stages.run("TensorRT engines", build_engines, staging.dir, workspace_mb=opts.workspace_mb,
                       prefill_chunk=opts.prefill_chunk, log=stages.log)
        weights_bytes = stored_bytes(network, plan, opts.dtype)
        staging.commit()
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    return ExportResult(out, stages.records, files, validation, checkpoint_bytes, weights_bytes)


def calibration_prompts(opts: ExportOptions, cfg) -> list[list[int]] | None:
    """The AWQ calibration prompts' token ids (None without ``--awq``): a bad file fails here,
    before any weight is read."""
    if not opts.awq:
        return None
    from .awq import calibration_ids  # noqa: PLC0415

    return calibration_ids(opts.model_dir, opts.calibration, opts.max_context, cfg.vocab_size)


def build_engines_only(opts: ExportOptions, stages: Stages) -> ExportResult:
    """``sdar-export ARTIFACT --engine trt``: the TensorRT engines of an exported artifact (no torch)."""
    model_dir = opts.model_dir
    if opts.engine != "trt":
        raise ExportError(f"{model_dir} is already an sdar-export artifact; pass --engine trt to build "
                          "TensorRT engines for it, or pass a checkpoint directory to export.")
    if opts.quantize is not None:
        raise ExportError(f"{model_dir} is already an artifact; quantization options apply when "
                          "exporting a checkpoint.")
    from .trt_build import build_engines, check_artifact_engine  # noqa: PLC0415  (no torch)

    check_artifact_engine(model_dir, "trt")
    stages.run("TensorRT engines", build_engines, model_dir, workspace_mb=opts.workspace_mb,
               prefill_chunk=opts.prefill_chunk, log=stages.log)
    return ExportResult(model_dir, stages.records)
