"""sdar-bench inputs: which checkpoint, which artifacts (one per block length / batch), cached.

A benchmark target is either an artifact dir (measured as-is: no sweeps over block length or batch,
no baselines that need the weights unless ``--model-dir`` names the checkpoint) or a Hugging Face
SDAR checkpoint dir, which is exported once per (block length, batch, max context, dtype) into
``~/.cache/sdar_rt/bench/`` and reused. ``--shape 0.6b`` writes a random-weight checkpoint with the
Qwen3-0.6B dimensions there first. ``LowBit`` names a weight-only quantized export of the same
checkpoint (``--int4``), cached next to the float one. Exporting needs torch (the ``export`` extra);
measuring does not.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .artifact import ArtifactError, load_artifact

# Exports (and random checkpoints) are made in a child process. Measured at the 0.6B shape: the float
# forward ran at 143-170 ms in a process that had just exported the model, 106-123 ms from a fresh
# one; the int4 forward (compute-bound) barely moved, which inflated the int4/float ratio.


def _in_child(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a spawned process (the exporter's heap never enters the timed one);
    its exception is re-raised here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(fn, *args, **kwargs).result()
    os.sync()   # the GBs just written are flushed now, not by the kernel during the next timing
    return result

# Random-weight checkpoints with real model dimensions: the exporter's presets of the same name.
SHAPES = {"0.6b": "qwen3-0.6b", "1.7b": "qwen3-1.7b"}


def cache_dir() -> Path:
    from .cli import CACHE_DIR

    return CACHE_DIR / "bench"


def _log(msg: str) -> None:
    print(f"sdar-bench: {msg}", file=sys.stderr, flush=True)


def is_artifact(path: str | Path | None) -> bool:
    return path is not None and (Path(path) / "manifest.json").is_file()


def shape_checkpoint(shape: str, seed: int = 0) -> Path:
    """A random checkpoint with the dimensions of ``shape``, made once in the cache."""
    if shape not in SHAPES:
        raise ValueError(f"unknown --shape {shape!r}; choose from {sorted(SHAPES)}")
    path = cache_dir() / "checkpoints" / f"random-{shape}-seed{seed}"
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        return path
    _log(f"writing a random-weight checkpoint with the {shape} dimensions to {path}")
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


def _checkpoint_key(model_dir: Path) -> str:
    """Cheap identity of a checkpoint: config.json contents + weight file names, sizes, mtimes."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for p in sorted(model_dir.glob("*.safetensors")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _exporter_key() -> str:
    """Identity of the exporter's code: a cached artifact from an older exporter (other graphs, other
    rewrites) must not be benchmarked as if it were the current one."""
    import sdar_export

    h = hashlib.sha256()
    for p in sorted(Path(sdar_export.__file__).parent.rglob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:8]


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


@dataclass(frozen=True)
class LowBit:
    """A weight-only quantized export of the benchmark's checkpoint (sdar-export's options)."""

    weights: str = "int4"
    group_size: int = 128
    lm_head_bits: int | None = None  # None: the LM head stays in the float dtype (exporter default)

    @property
    def tag(self) -> str:
        """Part of the cached artifact's name: every option that changes the weights."""
        head = f"-head{self.lm_head_bits}" if self.lm_head_bits else ""
        return f"{self.weights}-g{self.group_size}{head}"

    def export_kwargs(self) -> dict:
        return {"quantize": self.weights, "group_size": self.group_size, "lm_head_bits": self.lm_head_bits}


def artifact_for(
    model_dir: Path,
    *,
    block_length: int,
    batch: int,
    max_context: int | None,
    dtype: str,
    lowbit: LowBit | None = None,
) -> Path:
    """The artifact of ``model_dir`` for these export options; exported on first use."""
    ctx = f"c{max_context}" if max_context else "cdef"
    weights = f"{dtype}-{lowbit.tag}" if lowbit else dtype
    name = (f"{model_dir.name}-{_checkpoint_key(model_dir)}-x{_exporter_key()}-{weights}-L{block_length}"
            f"-b{batch}-{ctx}")
    art = cache_dir() / "artifacts" / name
    if is_artifact(art):
        try:
            load_artifact(art)
            return art
        except ArtifactError as exc:
            _log(f"cached artifact {art} is unusable ({exc}); exporting again")
    _log(f"exporting {model_dir} (block length {block_length}, batch {batch}, {weights}) -> {art}")
    try:
        from sdar_export.cli import export
    except ImportError as exc:
        raise RuntimeError(
            f"exporting a checkpoint needs torch ({exc}); pip install torch==2.13.0 and the "
            "package's [export] extra, or pass an artifact dir"
        ) from exc
    art.parent.mkdir(parents=True, exist_ok=True)
    _in_child(
        export,
        model_dir,
        art,
        dtype=dtype,
        block_length=block_length,
        max_context=max_context,
        batch=batch,
        force=True,
        quiet=False,     # minutes at a real shape: the exporter's stages show on stderr
        **(lowbit.export_kwargs() if lowbit else {}),
    )
    return art


class Targets:
    """Resolves the command line's target into a checkpoint and per-(L, batch) artifacts."""

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
        self.fixed_artifact: Path | None = None
        if shape:
            if target:
                raise ValueError("pass either a target dir or --shape, not both")
            self.model_dir: Path | None = shape_checkpoint(shape)
        elif is_artifact(target):
            self.fixed_artifact = Path(target)
            self.model_dir = Path(model_dir) if model_dir else None
        else:
            from .cli import ensure_checkpoint

            self.model_dir = ensure_checkpoint(target)
        if self.model_dir is not None and not (self.model_dir / "config.json").is_file():
            raise ArtifactError(f"{self.model_dir}: no config.json; --model-dir must be the checkpoint dir")

    def artifact(self, block_length: int, batch: int = 1, lowbit: LowBit | None = None) -> Path:
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
            what = f"the {lowbit.weights} export" if lowbit else "exporting"
            raise ValueError(f"{what} needs the checkpoint: pass a model dir as the target or --model-dir")
        max_context, dtype = self.max_context, self.dtype
        if self.fixed_artifact is not None:  # the quantized twin of a given artifact: its context, dtype
            fixed = load_artifact(self.fixed_artifact)
            max_context, dtype = max_context or fixed.max_context, fixed.dtype
        return artifact_for(
            self.model_dir,
            block_length=block_length,
            batch=batch,
            max_context=max_context,
            dtype=dtype,
            lowbit=lowbit,
        )

    def default_block_length(self) -> int:
        if self.fixed_artifact is not None:
            return load_artifact(self.fixed_artifact).block_length
        return 4

    def need_weights(self, what: str) -> Path:
        if self.model_dir is None:
            raise ValueError(
                f"the {what} baseline needs the checkpoint's weights: pass the model dir as the "
                "target, or --model-dir with an artifact"
            )
        return self.model_dir
