"""``manifest.json``: built by one function from what the export stages produced, checked by the
runtime's own validator when sdar_rt is importable. No torch import here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import EXPORTER_VERSION

# What the runtime reads from the checkpoint besides the weights (the tokenizer, the chat template,
# the stop ids), copied as they are; and the checkpoint's benchmark prompts where it has them, so that
# sdar-bench runs an artifact on the same prompt set as its checkpoint.
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json",
                "bench_prompts.txt")


def copy_checkpoint_files(model_dir: Path, out_dir: Path) -> None:
    for f in COPIED_FILES:
        if (Path(model_dir) / f).exists():
            shutil.copy2(Path(model_dir) / f, Path(out_dir) / f)


def manifest_api():
    """(format_version, validate) from sdar_rt.artifact when importable; local fallback otherwise."""
    try:
        from sdar_rt.artifact import MANIFEST_FORMAT_VERSION, validate_manifest  # noqa: PLC0415
        return MANIFEST_FORMAT_VERSION, validate_manifest
    except Exception:  # sdar_rt not installed / its extension not built: the exporter still works
        return 3, None   # keep in step with sdar_rt.artifact.MANIFEST_FORMAT_VERSION


def build_manifest(checkpoint, opts, graphs: dict, validation: dict, tolerance,
                   cpu_engine: dict | None = None, quantization: dict | None = None) -> dict:
    """The manifest of an export: ``checkpoint`` (sdar_export.checkpoint.Checkpoint, no weights needed),
    ``opts`` (sdar_export.options.ExportOptions, resolved for the config), the graphs section, the
    validation errors and tolerance, and the CPU engine's and the quantization's sections."""
    cfg = checkpoint.config
    version, _ = manifest_api()
    mdl = {"num_layers": cfg.num_hidden_layers, "num_heads": cfg.num_attention_heads,
           "num_kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
           "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
           "max_position_embeddings": cfg.max_position_embeddings}
    if cfg.is_moe:
        mdl.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.num_experts_per_tok)
    manifest = {
        "format": "sdar_rt.artifact",
        "format_version": version,
        "exporter_version": EXPORTER_VERSION,
        "source": {"model_type": cfg.model_type, "checkpoint_sha256": checkpoint.sha256,
                   "checkpoint_dtype": cfg.torch_dtype},
        "model": mdl,
        "block_length": opts.block_length,
        "max_context": opts.max_context,
        "batch": opts.batch,
        "dtype": opts.dtype,
        "compute_dtype": opts.compute_dtype,
        "prefill_chunk": opts.prefill_chunk,
        "opset": opts.opset,
        "tokens": {"mask_id": checkpoint.mask_id, "eos_ids": checkpoint.eos_ids, "pad_id": checkpoint.pad_id},
        "graphs": graphs,
        "engines": [],
        "validation": validation,
        "validation_tolerance": ({"atol": tolerance[0], "rtol": tolerance[1]} if tolerance else None),
        "tokenizer": {"files": ["tokenizer.json", "tokenizer_config.json"]},
    }
    if cpu_engine is not None:
        manifest["cpu_engine"] = cpu_engine
    if quantization is not None:
        manifest["quantization"] = quantization
    return manifest


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    _, validate = manifest_api()
    path = Path(out_dir) / "manifest.json"
    if validate is not None:
        validate(manifest, str(path))
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(artifact_dir: Path) -> dict:
    from .errors import ExportError  # noqa: PLC0415

    try:
        return json.loads((artifact_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ExportError(f"{artifact_dir / 'manifest.json'}: cannot be read ({e})") from e
