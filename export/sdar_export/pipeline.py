"""``sdar-export`` as a pipeline: HF SDAR checkpoint -> sdar_rt artifact, one stage after another.

    resolve source -> load checkpoint -> quantize (RTN / AWQ) -> build network -> export graphs
    -> validate -> pack engine weights -> write manifest -> build engines -> move into place

Memory is bounded by design: no stage holds the network's weights as a whole. The checkpoint is
read tensor by tensor (:class:`sdar_export.checkpoint.CheckpointWeights`); AWQ scales and quantized
weights are applied as each tensor is read (sdar_export.weight_sources), the quantized codes wait on
disk; the graphs are traced from a skeleton without weights and every weight is written once, into
the one file all graphs share (sdar_export.graph_weights); validation builds the PyTorch network one
layer at a time (sdar_export.reference) and runs the graphs in ONNX Runtime in pieces
(sdar_export.ort_segments). Each stage's time and peak memory are recorded (``--report``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CheckpointError, ExportError
from .options import ExportOptions
from .stages import StageRecord, Stages

COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json")


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
    if is_artifact(opts.model_dir):
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
    if opts.engine == "trt":  # fail before the expensive part
        from .trt_build import import_tensorrt  # noqa: PLC0415
        import_tensorrt()
    cfg = read_config(opts.model_dir)
    opts = opts.for_config(cfg)
    calibration = calibration_prompts(opts, cfg)       # bad calibration input fails before any weight
    out = output_path(opts)
    from .checkpoint import load_checkpoint  # noqa: PLC0415  (torch from here on)

    ck = stages.run("load checkpoint", load_checkpoint, opts.model_dir, dtype=opts.dtype, with_weights="lazy")
    from .staging import Staging  # noqa: PLC0415

    with Staging(out) as staging:
        source = ck.weights
        awq = None
        if calibration is not None:
            awq, source = awq_scaled(source, ck, calibration, opts, stages)
        plan = quantize(source, opts, staging.scratch, stages) if opts.quantize else None
        from .weight_sources import Dequantized  # noqa: PLC0415

        network = Dequantized(source, plan) if plan is not None else source
        from .model import graph_skeleton  # noqa: PLC0415

        skeleton = stages.run("build network", graph_skeleton, ck.config, opts.dtype, opts.compute_dtype)
        graphs, counts = stages.run("export ONNX graphs", export_graphs, skeleton, network, plan, staging.dir,
                                    opts, stages.log)
        check_trt_graph(staging.dir, graphs, opts.engine, stages)
        reference = network_reference(network, opts)
        validation, tolerance, quant_validation = {}, None, None
        if opts.validate:
            validation, tolerance, quant_validation = validate_graphs(
                reference, ck.weights, plan, graphs, staging.dir, opts, stages, ck.files)
        cpu_section = None
        if opts.cpu_engine:
            from .cpu_weights import export_cpu_weights  # noqa: PLC0415
            from .validate import TOLERANCES  # noqa: PLC0415

            cpu_section = export_cpu_weights(network, reference, plan, staging.dir, opts.dtype, opts.scheme(),
                                             opts.block_length, opts.max_context, opts.batch, opts.validate,
                                             opts.tolerance or TOLERANCES["float32"], stages)
        for f in COPIED_FILES:
            if (opts.model_dir / f).exists():
                shutil.copy2(opts.model_dir / f, staging.dir / f)
        from .manifest import build_manifest, write_manifest  # noqa: PLC0415

        quant_section = quantization_section(plan, opts, counts, awq, quant_validation)
        write_manifest(staging.dir, build_manifest(ck, opts, graphs, validation, tolerance, cpu_section,
                                                   quant_section))
        if opts.engine == "trt":
            from .trt_build import build_engines  # noqa: PLC0415
            stages.run("TensorRT engines", build_engines, staging.dir, workspace_mb=opts.workspace_mb,
                       prefill_chunk=opts.prefill_chunk, log=stages.log)
        weights_bytes = stored_weights_bytes(network, plan, opts)
        staging.commit()
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    return ExportResult(out, stages.records, files, validation, sum(f.stat().st_size for f in ck.files),
                        weights_bytes)


# --------------------------------------------------------------------------- the stages


def read_config(model_dir: Path):
    """The checkpoint's config, refusing what sdar-export cannot export (before any weight is read)."""
    from .config import SDARConfig  # noqa: PLC0415
    from .quantize import check_not_quantized  # noqa: PLC0415

    if not model_dir.is_dir():
        raise CheckpointError(f"{model_dir}: checkpoint directory not found.")
    cfg = SDARConfig.from_file(model_dir)
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
    check_not_quantized(model_dir)
    return cfg


def calibration_prompts(opts: ExportOptions, cfg) -> list[list[int]] | None:
    if not opts.awq:
        return None
    from .awq import calibration_ids  # noqa: PLC0415

    return calibration_ids(opts.model_dir, opts.calibration, opts.max_context, cfg.vocab_size)


def output_path(opts: ExportOptions) -> Path:
    out = opts.output_dir()
    if out.exists() and not opts.force:
        raise ExportError(f"{out} already exists; pass --force to overwrite it (or choose another -o).")
    if out.resolve() == opts.model_dir.resolve():
        raise ExportError(f"output {out} is the checkpoint directory itself; choose another -o.")
    return out


def awq_scaled(source, ck, prompts: list[list[int]], opts: ExportOptions, stages: Stages):
    """AWQ calibration; returns (its result, the source with the scales folded in)."""
    from .awq import AwqScaled, apply_awq  # noqa: PLC0415

    res = stages.run(f"AWQ calibration ({len(prompts)} prompts)", apply_awq, source, ck.config, prompts,
                     opts.scheme(), opts.dtype, opts.block_length, ck.mask_id, progress=stages.log)
    return res, AwqScaled(source, res.choices)


def quantize(source, opts: ExportOptions, scratch: Path, stages: Stages):
    """RTN quantization of the decoder linears; the codes wait on disk in ``scratch``."""
    from .quantize import SpilledTensors, float_head_note, quantize_source  # noqa: PLC0415

    scheme = opts.scheme()
    plan = stages.run(f"quantize weights ({scheme.weights}, {scheme.method})", quantize_source, source,
                      source.config, scheme, opts.dtype, SpilledTensors(scratch / "quantized"),
                      progress=stages.log)
    note = float_head_note(plan, source, opts.dtype)
    if note:
        stages.log(f"note: {note}")
    return plan


def export_graphs(skeleton, network, plan, directory: Path, opts: ExportOptions, progress):
    """Every graph of the artifact, traced from the skeleton, all reading one weights file; returns
    (the manifest's graphs section, the quantized node counts per graph)."""
    from .graph_weights import GraphWeights  # noqa: PLC0415
    from .onnx_export import export_all  # noqa: PLC0415
    from .quantize import make_rewriter  # noqa: PLC0415
    from .weight_store import WeightStore  # noqa: PLC0415

    model, params = skeleton
    counts: dict = {}
    with WeightStore(directory) as store:
        weights = GraphWeights(network, store, plan.graph_names if plan is not None else None)
        rewrite = make_rewriter(plan, opts.dtype, counts, store) if plan is not None else None
        # TensorRT's graph, unless the weights are in a form only ONNX Runtime runs (MatMulNBits)
        for_trt = plan is None or plan.scheme.format == "QDQ"
        graphs = export_all(model, params.recipes_of(model), directory, opts.block_length, weights,
                            batch=opts.batch, opset=opts.opset, progress=progress, rewrite=rewrite,
                            trt=for_trt)
    return graphs, counts


def check_trt_graph(art: Path, graphs: dict, engine: str, stages: Stages) -> None:
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
        stages.log(f"note: TensorRT will not build this artifact: {detail}")


def network_reference(network, opts: ExportOptions):
    """The PyTorch network the graphs compute, run layer by layer (computed once per step)."""
    from .reference import ReferenceNetwork  # noqa: PLC0415
    from .validate import CachedReference  # noqa: PLC0415

    return CachedReference(ReferenceNetwork(network, opts.dtype, opts.compute_dtype, opts.block_length,
                                            opts.batch))


def validate_graphs(reference, checkpoint_weights, plan, graphs: dict, directory: Path, opts: ExportOptions,
                    stages: Stages, checkpoint_files: list[Path]):
    """ONNX Runtime against PyTorch for every graph; returns (the manifest's validation errors, the
    tolerance, the quantization's validation record or None)."""
    from .validate import TOLERANCES, format_report, segment_bytes_for, validate_artifact_graphs  # noqa: PLC0415

    tol = opts.tolerance or TOLERANCES[opts.dtype]
    args = (directory, graphs, opts.block_length, opts.max_context, opts.batch, opts.dtype, tol)
    segments = segment_bytes_for(sum(t.stat().st_size for t in checkpoint_files))
    quant = None
    if plan is None:
        reports = stages.run("validate with ONNX Runtime", validate_artifact_graphs, reference, *args,
                             progress=stages.log, segment_bytes=segments)
    else:
        from .quantize import validate_quantized  # noqa: PLC0415
        from .reference import ReferenceNetwork  # noqa: PLC0415

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


def quantization_section(plan, opts: ExportOptions, counts: dict, awq, validation) -> dict | None:
    if plan is None:
        return None
    from .quantize import manifest_section  # noqa: PLC0415

    section = manifest_section(plan, opts.dtype, counts.get("decode", {}))
    if awq is not None:
        section["awq"] = awq.manifest()
    if validation is not None:
        section["validation"] = validation
    return section


def stored_weights_bytes(network, plan, opts: ExportOptions) -> int:
    """The network's weights as the artifact stores them, each once: float tensors in the artifact's
    dtype (the tied head counted with the embedding table), quantized ones at their packed size."""
    import torch  # noqa: PLC0415

    from .model import to_torch_dtype  # noqa: PLC0415

    size = torch.empty(0, dtype=to_torch_dtype(opts.dtype)).element_size()
    total = 0
    quantized = set(plan.tensors) if plan is not None else set()
    for name in network.names():
        if name in quantized:
            continue
        if name == "lm_head.weight" and network.tied and "model.embed_tokens.weight" not in quantized:
            continue
        n = 1
        for d in network.shape(name):
            n *= d
        total += n * size
    return total + (plan.packed_bytes() if plan is not None else 0)


def build_engines_only(opts: ExportOptions, stages: Stages) -> ExportResult:
    """``sdar-export ARTIFACT --engine trt``: the TensorRT engines of an exported artifact (no torch)."""
    model_dir = opts.model_dir
    if opts.engine != "trt":
        raise ExportError(f"{model_dir} is already an sdar-export artifact; pass --engine trt to build "
                          "TensorRT engines for it, or pass a checkpoint directory to export.")
    if opts.quantize is not None:
        raise ExportError(f"{model_dir} is already an artifact; quantization options apply when "
                          "exporting a checkpoint.")
    check_artifact_engine(model_dir, "trt")
    from .trt_build import build_engines  # noqa: PLC0415  (no torch)

    stages.run("TensorRT engines", build_engines, model_dir, workspace_mb=opts.workspace_mb,
               prefill_chunk=opts.prefill_chunk, log=stages.log)
    return ExportResult(model_dir, stages.records)


def check_artifact_engine(artifact_dir: Path, engine: str) -> None:
    """Refuse to build engines for an artifact whose graphs the engine cannot run (no torch)."""
    from .manifest import read_manifest  # noqa: PLC0415

    try:
        from sdar_rt.artifact import check_engine_support  # noqa: PLC0415
    except Exception:  # sdar_rt not importable: read the manifest directly
        check_engine_support = None
    manifest = read_manifest(artifact_dir)
    if check_engine_support is not None:
        try:
            check_engine_support(manifest, engine, str(artifact_dir / "manifest.json"))
        except ValueError as e:
            raise ExportError(str(e)) from e
    elif (manifest.get("quantization") or {}).get("format") == "MatMulNBits" and engine == "trt":
        raise ExportError(f"{artifact_dir}: MatMulNBits graphs cannot be built by TensorRT; re-export with "
                          "--quant-format QDQ (or --engine trt).")
