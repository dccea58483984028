"""The cache of exported artifacts that ``sdar-demo`` and ``sdar-bench`` share.

An artifact is cached under ``$XDG_CACHE_HOME/sdar_rt`` (``~/.cache/sdar_rt`` by default) by a name
made of everything that changes its files: the checkpoint, the exporter's code and the export
options, with the exporter's defaults filled in, so that the demo's export and the benchmark's
default configuration are one and the same directory. The checkpoint counts by the contents of its
files (a reinstall that rewrites their time stamps finds the same artifact). Writing an artifact
removes the ones it supersedes: the same checkpoint (directory, or Hub repository) and options from
an earlier version of its files or of the exporter. Exporting needs torch (the ``export`` extra);
finding a cached artifact does not.

    sdar_rt/artifacts/NAME-CHECKPOINT-xEXPORTER-OPTIONS/              the artifact
    sdar_rt/artifacts/NAME-CHECKPOINT-xEXPORTER-OPTIONS.source.json   its checkpoint and options
    sdar_rt/file-digests.json                                         weight files' sha256 digests
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .artifact import ArtifactError, load_artifact
from .extras import missing_extra

# sdar_export's default block length (its cli module imports no torch, but the exporter may be
# absent where only cached artifacts are used, so the value is repeated here).
DEFAULT_BLOCK_LENGTH = 4


def trained_block_length(model_dir: Path) -> int:
    """The block length the checkpoint was trained with (config.json's ``block_size``), else the
    exporter's default."""
    from sdar_export.config import trained_block_length as from_config  # no torch import

    return from_config(model_dir) or DEFAULT_BLOCK_LENGTH


def cache_root() -> Path:
    """The cache directory, read at every call (so ``XDG_CACHE_HOME`` set later still counts)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "sdar_rt"


# The checkpoint files an artifact is made from (the weights, and what the exporter copies or reads).
_SOURCE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja")
_HF_BLOB_NAME = re.compile(r"[0-9a-f]{64}")  # a Hugging Face cache blob named by its sha256


def checkpoint_key(model_dir: Path) -> str:
    """Identity of a checkpoint: the contents of its config, tokenizer and weight files, never their
    time stamps (a reinstall or a copy rewrites those, and must not cause a re-export). A weight file
    is hashed once per (size, modification time, inode) and the digest kept in the cache, so only the
    first use of a checkpoint (or a rewritten file) reads it; a Hugging Face cache blob is named by
    its sha256 already."""
    h = hashlib.sha256()
    for name in _SOURCE_FILES:
        if (model_dir / name).is_file():
            h.update(name.encode() + b"\0" + (model_dir / name).read_bytes())
    weights = sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.safetensors.index.json"))
    with _DigestMemo() as memo:
        for p in weights:
            h.update(f"{p.name}:{memo.digest(p)}".encode())
    return h.hexdigest()[:16]


class _DigestMemo:
    """sha256 digests of weight files, remembered in ``<cache>/file-digests.json`` by resolved path,
    size, modification time and inode (any rewrite of the file changes one of them)."""

    def __init__(self) -> None:
        self._path = cache_root() / "file-digests.json"
        self._entries: dict[str, dict] = {}
        self._changed = False

    def __enter__(self) -> _DigestMemo:
        try:
            self._entries = json.loads(self._path.read_text())
        except (OSError, ValueError):
            self._entries = {}
        return self

    def __exit__(self, *exc) -> None:
        if not self._changed:
            return
        try:  # written whole and renamed: a concurrent reader sees the old or the new file
            self._path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._entries))
            tmp.replace(self._path)
        except OSError:
            pass  # a read-only cache only costs hashing again next time

    def digest(self, path: Path) -> str:
        real = path.resolve()
        if _HF_BLOB_NAME.fullmatch(real.name) and real.parent.name == "blobs":
            return real.name
        st = real.stat()
        stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
        entry = self._entries.get(str(real))
        if entry is not None and all(entry.get(k) == v for k, v in stamp.items()):
            return entry["sha256"]
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        self._entries[str(real)] = dict(stamp, sha256=h.hexdigest())
        self._changed = True
        return h.hexdigest()


def checkpoint_name(model_dir: Path) -> str:
    """What the cache calls a checkpoint: its directory's name, or for a snapshot in the Hugging Face
    cache (``models--ORG--NAME/snapshots/COMMIT``) the repository's name."""
    repo = model_dir.parent.parent.name
    if model_dir.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.split("--")[-1]
    return model_dir.name


def checkpoint_source(model_dir: Path) -> str:
    """Which checkpoint an artifact comes from, whatever its version: the Hub repository for a snapshot
    in the Hugging Face cache (every revision of it), else the directory."""
    repo = model_dir.parent.parent.name
    if model_dir.parent.name == "snapshots" and repo.startswith("models--"):
        return "hub:" + "/".join(repo.split("--")[1:])
    return str(model_dir.resolve())


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
    key = f"{checkpoint_key(model_dir)}-x{exporter_key()}"
    return cache_root() / "artifacts" / f"{checkpoint_name(model_dir)}-{key}-{_options_tag(options)}"


def _options_tag(options: ExportOptions) -> str:
    ctx = f"c{options.max_context}" if options.max_context else "cdef"
    return f"{options.weights_tag}-L{options.block_length}-b{options.batch}-{ctx}"


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
    from sdar_export.cli import export  # imports no torch: the export itself does (the export extra)

    art = artifact_path(model_dir, options)
    art.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(options.export_kwargs(), force=True, quiet=False)
    try:
        if in_child:
            _in_child(export, model_dir, art, **kwargs)
        else:
            export(model_dir, art, **kwargs)
    except ImportError as exc:
        error = missing_extra(exc, "exporting a checkpoint (pass an artifact directory instead)")
        if error is None:
            raise
        raise error from exc
    remove_superseded(art, checkpoint_source(model_dir), _options_tag(options))
    return art


def _note(art: Path) -> Path:
    """The file next to a cached artifact that says which checkpoint and options it holds."""
    return art.with_name(art.name + ".source.json")


def remove_superseded(art: Path, source: str, options_tag: str) -> list[Path]:
    """Records that ``art`` holds ``source``'s artifact for these options, and drops ``source`` from
    the other cached artifacts with the same options (earlier versions of its files or of the
    exporter); one that no checkpoint holds any more is removed. Returns the removed artifacts.

    Two checkpoint dirs with the same contents share one artifact, so the note keeps a list."""
    removed = []
    for note in art.parent.glob("*.source.json"):
        other = note.with_name(note.name[: -len(".source.json")])
        info = _read_note(note)
        if other == art or info.get("options") != options_tag or source not in info.get("sources", []):
            continue
        info["sources"].remove(source)
        if info["sources"]:
            note.write_text(json.dumps(info))
            continue
        shutil.rmtree(other, ignore_errors=True)
        note.unlink(missing_ok=True)
        removed.append(other)
    info = _read_note(_note(art))
    sources = [s for s in info.get("sources", []) if s != source] + [source]
    _note(art).write_text(json.dumps({"sources": sources, "options": options_tag}))
    return removed


def _read_note(note: Path) -> dict:
    try:
        info = json.loads(note.read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) and isinstance(info.get("sources"), list) else {}
