"""The cache of exported artifacts that ``sdar-demo`` and ``sdar-bench`` share.

An artifact is cached under ``$XDG_CACHE_HOME/sdar_rt`` (``~/.cache/sdar_rt`` by default) by a name
made of everything that changes its files: the checkpoint, the exporter's code and the export
options, with the exporter's defaults filled in, so that the demo's export and the benchmark's
default configuration are one and the same directory. Exporting needs torch (the ``export``
extra); finding a cached artifact does not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .artifact import ArtifactError, load_artifact

# sdar_export's default block length (its cli module imports no torch, but the exporter may be
# absent where only cached artifacts are used, so the value is repeated here).
DEFAULT_BLOCK_LENGTH = 4


def cache_root() -> Path:
    """The cache directory, read at every call (so ``XDG_CACHE_HOME`` set later still counts)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sdar_rt"


def checkpoint_key(model_dir: Path) -> str:
    """Identity of a checkpoint: config.json's contents and the weight files' names, sizes and
    modification times. Hashing the weights themselves would cost seconds per gigabyte on every
    call; a rewritten weight file changes its time stamp anyway."""
    h = hashlib.sha256((model_dir / "config.json").read_bytes())
    for p in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.safetensors.index.json")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def exporter_key() -> str:
    """Identity of the exporter's code: an artifact written by another version of the exporter
    (other graphs, other rewrites) is exported again rather than reused."""
    import sdar_export  # shipped in the same wheel; imports no torch

    h = hashlib.sha256()
    for p in sorted(Path(sdar_export.__file__).parent.rglob("*.py")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:8]


@dataclass(frozen=True)
class ExportOptions:
    """The sdar-export options that change an artifact's files (None: the exporter's default)."""

    dtype: str = "float32"
    block_length: int = DEFAULT_BLOCK_LENGTH
    batch: int = 1
    max_context: int | None = None
    quantize: str | None = None  # "int4" | "int8": weight-only quantization of the decoder
    group_size: int | None = None
    lm_head_bits: int | None = None  # None: the LM head keeps the float dtype (the exporter's default)

    @property
    def weights_tag(self) -> str:
        """The weight format in a few characters: float32, float32-int4-g128-head8."""
        if not self.quantize:
            return self.dtype
        head = f"-head{self.lm_head_bits}" if self.lm_head_bits else ""
        group = f"-g{self.group_size}" if self.group_size else ""
        return f"{self.dtype}-{self.quantize}{group}{head}"

    def export_kwargs(self) -> dict:
        """Keyword arguments of ``sdar_export.cli.export`` (quantization options only when quantized,
        which the exporter requires)."""
        kw = {k: v for k, v in asdict(self).items() if k not in ("quantize", "group_size", "lm_head_bits")}
        if self.quantize:
            kw.update(quantize=self.quantize, group_size=self.group_size, lm_head_bits=self.lm_head_bits)
        return kw


def artifact_path(model_dir: Path, options: ExportOptions) -> Path:
    """Where the artifact of ``model_dir`` exported with ``options`` is cached."""
    ctx = f"c{options.max_context}" if options.max_context else "cdef"
    name = (
        f"{model_dir.name}-{checkpoint_key(model_dir)}-x{exporter_key()}-{options.weights_tag}"
        f"-L{options.block_length}-b{options.batch}-{ctx}"
    )
    return cache_root() / "artifacts" / name


def cached(model_dir: Path, options: ExportOptions, log: Callable[[str], None]) -> Path | None:
    """The cached artifact when there is a usable one (``log`` says why a present one is not)."""
    art = artifact_path(model_dir, options)
    if not (art / "manifest.json").is_file():
        return None
    try:
        load_artifact(art)
    except ArtifactError as exc:
        log(f"the cached artifact {art} is unusable ({exc}); exporting again")
        return None
    return art


def _in_child(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a spawned process, its exception re-raised here: the exporter's heap
    (several times the model's size) never enters the calling process."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = pool.submit(fn, *args, **kwargs).result()
    os.sync()  # the gigabytes just written are flushed now, not while the caller measures something
    return result


def export_cached(model_dir: Path, options: ExportOptions, *, in_child: bool = False) -> Path:
    """Exports ``model_dir`` into the cache (replacing whatever is there); returns the artifact.

    ``in_child``: export in a separate process. Measured at the 0.6B shape, the float forward ran at
    143-170 ms in a process that had just exported the model and at 106-123 ms in a fresh one, so a
    benchmark never exports in the process it times.
    """
    try:
        from sdar_export.cli import export
    except ImportError as exc:
        raise RuntimeError(
            f"exporting a checkpoint needs torch ({exc}): pip install torch==2.13.0 (CPU wheel) and "
            "the package's [export] extra, or pass an artifact directory"
        ) from exc
    art = artifact_path(model_dir, options)
    art.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(options.export_kwargs(), force=True, quiet=False)
    if in_child:
        _in_child(export, model_dir, art, **kwargs)
    else:
        export(model_dir, art, **kwargs)
    return art
