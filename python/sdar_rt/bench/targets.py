"""What sdar-bench measures: the command line's target resolved into a checkpoint and its artifacts.

A target is either an artifact dir (measured as is: no sweeps over block length or batch, no
baselines that need the weights unless ``--model-dir`` names the checkpoint) or a Hugging Face SDAR
checkpoint dir, exported once per (block length, batch, max context, weights) into the artifact
cache that sdar-demo shares (``sdar_rt.artifact_cache``), in a child process so that the timed
process never holds the exporter's memory. ``--shape 0.6b`` writes a random-weight checkpoint with
the Qwen3-0.6B dimensions into the cache first. Exporting needs torch (the ``export`` extra);
measuring does not.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..artifact import ArtifactError, load_artifact
from ..artifact_cache import ExportOptions, _in_child, cache_root, cached, export_cached
from ..cli import PACKAGED_CHECKPOINT
from .progress import log

# Random-weight checkpoints with real model dimensions: the exporter's presets of the same name.
SHAPES = {"0.6b": "qwen3-0.6b", "1.7b": "qwen3-1.7b"}


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The exporter's report (stdout, in its child process) goes to stderr with sdar-bench's other
    progress: stdout carries only the JSON asked for with ``--json -``."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def is_artifact(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / "manifest.json").is_file()


def _has_weights(path: Path) -> bool:
    return any(path.glob("*.safetensors")) or any(path.glob("*.safetensors.index.json"))


def check_target_dir(path: Path) -> None:
    """A directory that is neither an artifact nor a checkpoint: say which file is missing."""
    if not path.is_dir():
        raise ArtifactError(
            f"{path}: no such directory; pass an artifact written by sdar-export or a "
            "Hugging Face SDAR checkpoint directory"
        )
    if any(path.glob("*.onnx")):
        raise ArtifactError(
            f"{path}: no manifest.json, so this is not a finished sdar_rt artifact (sdar-export "
            "writes manifest.json last: the export was interrupted or the file removed); "
            "export the checkpoint again with sdar-export"
        )
    if not (path / "config.json").is_file():
        raise ArtifactError(
            f"{path}: neither an sdar_rt artifact (no manifest.json) nor a Hugging Face "
            "checkpoint (no config.json); pass an artifact written by sdar-export or a "
            "checkpoint directory"
        )
    if not _has_weights(path):
        raise ArtifactError(
            f"{path}: no manifest.json (not an sdar_rt artifact) and no *.safetensors "
            "weights next to its config.json (not a complete checkpoint); pass an artifact "
            "written by sdar-export or a checkpoint directory with its weights"
        )


def shape_checkpoint(shape: str, seed: int = 0) -> Path:
    """A random checkpoint with the dimensions of ``shape``, made once in the cache."""
    if shape not in SHAPES:
        raise ValueError(f"unknown --shape {shape!r}; choose from {sorted(SHAPES)}")
    path = cache_root() / "checkpoints" / f"random-{shape}-seed{seed}"
    if (path / "config.json").is_file() and _has_weights(path):
        return path
    log(f"writing a random-weight checkpoint with the {shape} dimensions to {path}")
    try:
        from sdar_export.make_checkpoint import make_checkpoint
    except ImportError as exc:
        raise RuntimeError(
            f"--shape needs the exporter and torch ({exc}); pip install torch==2.13.0 "
            "and the package's [export] extra"
        ) from exc
    tmp = path.with_name(path.name + ".partial")
    _in_child(make_checkpoint, tmp, preset=SHAPES[shape], seed=seed, moe=False)
    tmp.rename(path)
    return path


def checkpoint_info(model_dir: Path) -> dict:
    cfg = json.loads((model_dir / "config.json").read_text())
    keys = (
        "model_type",
        "num_hidden_layers",
        "hidden_size",
        "intermediate_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "vocab_size",
        "tie_word_embeddings",
    )
    return {k: cfg.get(k) for k in keys}


class Targets:
    """Resolves the command line's target into a checkpoint and per-(L, batch, weights) artifacts."""

    def __init__(
        self,
        target: str | None,
        *,
        shape: str | None,
        model_dir: str | None,
        fp16: bool,
        max_context: int | None,
    ):
        self.dtype = "float16" if fp16 else "float32"
        self.max_context = max_context
        self.shape = shape
        self.fixed_artifact: Path | None = None
        if shape:
            if target:
                raise ValueError("pass either a target dir or --shape, not both")
            self.model_dir: Path | None = shape_checkpoint(shape)
        elif target is None:
            if not (PACKAGED_CHECKPOINT / "config.json").is_file():
                raise ValueError(
                    "this install has no packaged checkpoint; pass a checkpoint or artifact "
                    "directory, or --shape"
                )
            self.model_dir = PACKAGED_CHECKPOINT
        elif is_artifact(target):
            self.fixed_artifact = Path(target).expanduser()
            self.model_dir = Path(model_dir).expanduser() if model_dir else None
        else:
            from sdar_export.hub import resolve_checkpoint  # a Hub id (ORG/NAME) is fetched; no torch

            self.model_dir = resolve_checkpoint(target, log=log)
            check_target_dir(self.model_dir)
        if self.model_dir is not None and not (self.model_dir / "config.json").is_file():
            raise ArtifactError(f"{self.model_dir}: no config.json; --model-dir must be the checkpoint dir")

    @property
    def name(self) -> str:
        """What the report and the plot call the model: a name, never a path of this machine."""
        if self.shape:
            return f"random weights with Qwen3-{self.shape.upper()} dimensions"
        if self.fixed_artifact is not None:
            art = load_artifact(self.fixed_artifact)
            return (
                f"artifact {self.fixed_artifact.name} ({art.model['num_layers']} layers, "
                f"block length {art.block_length}, {art.dtype})"
            )
        assert self.model_dir is not None
        info = checkpoint_info(self.model_dir)
        where = "packaged checkpoint" if self.model_dir == PACKAGED_CHECKPOINT else "checkpoint"
        return (
            f"{where} {self.model_dir.name} ({info['num_hidden_layers']} layers, hidden "
            f"{info['hidden_size']})"
        )

    def artifact(self, block_length: int, batch: int = 1, lowbit: ExportOptions | None = None) -> Path:
        """The artifact for block length / batch (``lowbit``: its quantization options), exported into
        the cache on first use."""
        if self.fixed_artifact is not None and lowbit is None:
            a = load_artifact(self.fixed_artifact)
            if a.block_length == block_length and a.batch >= batch:
                return self.fixed_artifact
            if self.model_dir is None:
                raise ValueError(
                    f"{self.fixed_artifact} has block length {a.block_length} and batch {a.batch}; "
                    f"block length {block_length} / batch {batch} needs the checkpoint: pass a model dir "
                    "as the target or --model-dir"
                )
        if self.model_dir is None:
            what = f"the {lowbit.quantize} export" if lowbit else "exporting"
            raise ValueError(f"{what} needs the checkpoint: pass a model dir as the target or --model-dir")
        max_context, dtype = self.max_context, self.dtype
        if self.fixed_artifact is not None:  # the quantized twin of a given artifact: its context, dtype
            fixed = load_artifact(self.fixed_artifact)
            max_context, dtype = max_context or fixed.max_context, fixed.dtype
        q = lowbit or ExportOptions()
        options = ExportOptions(
            dtype=dtype,
            block_length=block_length,
            batch=batch,
            max_context=max_context,
            quantize=q.quantize,
            group_size=q.group_size,
            lm_head_bits=q.lm_head_bits,
        )
        art = cached(self.model_dir, options, log)
        if art is not None:
            return art
        log(
            f"exporting {self.model_dir.name} (block length {block_length}, batch {batch}, "
            f"{options.weights_tag}) into the artifact cache"
        )
        with _stdout_to_stderr():
            return export_cached(self.model_dir, options, in_child=True)

    def default_block_length(self) -> int:
        if self.fixed_artifact is not None:
            return load_artifact(self.fixed_artifact).block_length
        from ..artifact_cache import DEFAULT_BLOCK_LENGTH

        return DEFAULT_BLOCK_LENGTH

    def need_weights(self, what: str) -> Path:
        if self.model_dir is None:
            raise ValueError(
                f"the {what} baseline needs the checkpoint's weights: pass the model dir as the "
                "target, or --model-dir with an artifact"
            )
        return self.model_dir
