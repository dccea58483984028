"""The artifact directory: ``manifest.json`` loading and validation (CONTRACTS.md "Artifact dir").

The exporter imports :data:`MANIFEST_FORMAT_VERSION`, :func:`validate_manifest` and
:func:`write_manifest` from here, so both sides agree on one definition. No torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "sdar_rt.artifact"
# 2: the artifact also holds the ONNX Runtime ``step`` graph (dynamic T + a ``num_logits`` input,
# serving prefill, decode and fused from one session, so the weights are in memory once).
# 3: the artifact also holds TensorRT's ``trt`` graph (dynamic T, the logits of the last L
# positions), and a TensorRT engine is one plan built from it with one optimization profile per
# step kind (``engines`` entries with ``graph: "trt"`` and ``profiles``), instead of a plan per graph.
MANIFEST_FORMAT_VERSION = 3
DTYPES = ("float32", "float16", "bfloat16")
GRAPH_NAMES = ("prefill", "decode", "fused", "step", "trt")
STEP_GRAPH = "step"
TRT_GRAPH = "trt"
STEP_KINDS = ("prefill", "decode", "fused")
REQUIRED_GRAPHS = ("prefill", "decode")
REQUIRED_KEYS = (
    "format",
    "format_version",
    "model",
    "block_length",
    "max_context",
    "batch",
    "dtype",
    "tokens",
    "graphs",
)
REQUIRED_MODEL_KEYS = ("num_layers", "num_kv_heads", "head_dim", "vocab_size")

_FIX = "re-export the checkpoint with `sdar-export MODEL_DIR -o ARTIFACT_DIR`"

# Weight quantization (manifest "quantization", written by sdar-export --int4/--int8):
# graph form -> engines that run it. MatMulNBits is an ONNX Runtime contrib op; the QDQ form
# (opset-21 DequantizeLinear int4 blocked / int8 per-channel -> MatMul) is what TensorRT's ONNX
# parser turns into weight-only INT4/INT8 GEMMs, and ONNX Runtime runs it too.
QUANT_FORMATS = {"MatMulNBits": ("ort",), "QDQ": ("ort", "trt")}
QUANT_WEIGHTS = {"int4": 4, "int8": 8}


class ArtifactError(ValueError):
    """The artifact directory cannot be used; the message names the file and the fix."""


def _fail(where: str, problem: str, fix: str = _FIX) -> ArtifactError:
    return ArtifactError(f"{where}: {problem}; {fix}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def validate_manifest(manifest: dict, where: str = MANIFEST_NAME) -> None:
    """Checks the structure and values of a manifest dict; raises :class:`ArtifactError`."""
    if not isinstance(manifest, dict):
        raise _fail(where, "the manifest is not a JSON object")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise _fail(where, f"'format' is {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    version = manifest.get("format_version")
    if version != MANIFEST_FORMAT_VERSION:
        if isinstance(version, int) and version > MANIFEST_FORMAT_VERSION:
            raise _fail(
                where,
                f"format_version {version} is newer than this runtime supports ({MANIFEST_FORMAT_VERSION})",
                "upgrade sdar_rt or export with a matching sdar-export",
            )
        raise _fail(where, f"format_version is {version!r}, this runtime reads {MANIFEST_FORMAT_VERSION} "
                           "(the artifact was written by an older sdar-export)")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise _fail(where, f"missing required keys {missing}")
    model = manifest["model"]
    if not isinstance(model, dict):
        raise _fail(where, "'model' is not an object")
    for key in REQUIRED_MODEL_KEYS:
        if not _positive_int(model.get(key)):
            raise _fail(where, f"model.{key} must be a positive integer, got {model.get(key)!r}")
    for key in ("block_length", "max_context", "batch"):
        if not _positive_int(manifest[key]):
            raise _fail(where, f"{key} must be a positive integer, got {manifest[key]!r}")
    L = manifest["block_length"]
    if manifest["max_context"] % L:
        raise _fail(where, f"max_context {manifest['max_context']} is not a multiple of block_length {L}")
    if manifest["dtype"] not in DTYPES:
        raise _fail(where, f"dtype {manifest['dtype']!r} is not one of {DTYPES}")
    tokens = manifest["tokens"]
    vocab = model["vocab_size"]
    if not isinstance(tokens, dict):
        raise _fail(where, "'tokens' is not an object")
    mask_id = tokens.get("mask_id")
    if not isinstance(mask_id, int) or not 0 <= mask_id < vocab:
        raise _fail(where, f"tokens.mask_id must be an id in [0, {vocab}), got {mask_id!r}")
    eos = tokens.get("eos_ids", [])
    if not isinstance(eos, list) or not all(isinstance(i, int) and 0 <= i < vocab for i in eos):
        raise _fail(where, f"tokens.eos_ids must be a list of ids in [0, {vocab}), got {eos!r}")
    graphs = manifest["graphs"]
    if not isinstance(graphs, dict):
        raise _fail(where, "'graphs' is not an object")
    for name in REQUIRED_GRAPHS:
        if name not in graphs:
            raise _fail(where, f"graph {name!r} is missing from 'graphs'")
    for name, entry in graphs.items():
        if name not in GRAPH_NAMES:
            raise _fail(where, f"unknown graph {name!r} (expected {GRAPH_NAMES})")
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"]:
            raise _fail(where, f"graphs.{name}.file must be a file name")
        if name == STEP_GRAPH:
            if entry.get("tokens") is not None or entry.get("logits") != "num_logits":
                raise _fail(where, "graphs.step must have a dynamic token axis (tokens null) and "
                                   "logits 'num_logits'")
            continue
        if name == TRT_GRAPH:
            if entry.get("tokens") is not None or entry.get("logits") != L:
                raise _fail(where, f"graphs.trt must have a dynamic token axis (tokens null) and logits {L}")
            continue
        want_tokens = {"decode": L, "fused": 2 * L}.get(name)
        if want_tokens is not None and entry.get("tokens", want_tokens) != want_tokens:
            raise _fail(where, f"graphs.{name}.tokens is {entry.get('tokens')!r}, expected {want_tokens}")
        want_logits = 0 if name == "prefill" else L
        if entry.get("logits") not in (None, want_logits):
            raise _fail(where, f"graphs.{name}.logits is {entry.get('logits')!r}, expected {want_logits}")
    engines = manifest.get("engines", [])
    if not isinstance(engines, list) or not all(isinstance(e, dict) and "file" in e for e in engines):
        raise _fail(where, "'engines' must be a list of objects with a 'file'")
    _validate_quantization(manifest.get("quantization"), where)


def _validate_quantization(q: Any, where: str) -> None:
    if q is None:
        return
    if not isinstance(q, dict):
        raise _fail(where, "'quantization' must be an object or null")
    weights = q.get("weights")
    if weights not in QUANT_WEIGHTS:
        raise _fail(where, f"quantization.weights {weights!r} is not one of {sorted(QUANT_WEIGHTS)}",
                    "upgrade sdar_rt or re-export with --int4/--int8")
    if q.get("bits", QUANT_WEIGHTS[weights]) != QUANT_WEIGHTS[weights]:
        raise _fail(where, f"quantization.bits {q.get('bits')!r} does not match weights {weights!r}")
    gs = q.get("group_size")
    if gs is not None and not (_positive_int(gs) and gs >= 16 and gs & (gs - 1) == 0):
        raise _fail(where, f"quantization.group_size must be a power of two >= 16 or null, got {gs!r}")
    if gs is None and weights == "int4":
        raise _fail(where, "quantization.group_size is required for int4")
    if not isinstance(q.get("symmetric"), bool):
        raise _fail(where, f"quantization.symmetric must be true or false, got {q.get('symmetric')!r}")
    fmt = q.get("format")
    if fmt not in QUANT_FORMATS:
        raise _fail(where, f"quantization.format {fmt!r} is not one of {sorted(QUANT_FORMATS)}",
                    "upgrade sdar_rt or re-export with --int4/--int8")


def check_engine_support(manifest: dict, engine: str, where: str = MANIFEST_NAME) -> None:
    """Raise :class:`ArtifactError` when ``engine`` ("ort" | "trt") cannot run the artifact's graphs."""
    q = manifest.get("quantization")
    if not q:
        return
    fmt = q.get("format")
    ok = QUANT_FORMATS.get(fmt, ())
    if engine in ok:
        if engine == "trt" and not q.get("symmetric", True):
            raise _fail(where, "asymmetric weight quantization cannot run on TensorRT 10.3 (symmetric only)",
                        "re-export with `sdar-export MODEL_DIR --int4 --symmetric --quant-format QDQ`")
        return
    name = {"ort": "ONNX Runtime", "trt": "TensorRT"}.get(engine, engine)
    if engine == "trt" and fmt == "MatMulNBits":
        fix = ("re-export for TensorRT with `sdar-export MODEL_DIR --" + str(q.get("weights")) +
               " --quant-format QDQ` (opset-21 DequantizeLinear -> MatMul), or use engine='ort'")
    else:
        fix = "re-export with a format this engine runs, or upgrade sdar_rt"
    raise _fail(where, f"{q.get('weights')} weights in {fmt!r} form cannot run on {name}", fix)


def write_manifest(artifact_dir: str | Path, manifest: dict) -> Path:
    """Validates ``manifest`` and writes it as ``ARTIFACT_DIR/manifest.json``; returns the path."""
    path = Path(artifact_dir) / MANIFEST_NAME
    validate_manifest(manifest, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Artifact:
    """A validated artifact directory."""

    path: Path
    manifest: dict

    @property
    def block_length(self) -> int:
        return self.manifest["block_length"]

    @property
    def max_context(self) -> int:
        return self.manifest["max_context"]

    @property
    def batch(self) -> int:
        return self.manifest["batch"]

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def model(self) -> dict:
        return self.manifest["model"]

    @property
    def mask_id(self) -> int:
        return self.manifest["tokens"]["mask_id"]

    @property
    def eos_ids(self) -> list[int]:
        return list(self.manifest["tokens"].get("eos_ids", []))

    def has_graph(self, name: str) -> bool:
        return name in self.manifest["graphs"]

    def graph_path(self, name: str) -> Path:
        if name not in self.manifest["graphs"]:
            raise _fail(str(self.path / MANIFEST_NAME), f"the artifact has no {name!r} graph")
        return self.path / self.manifest["graphs"][name]["file"]

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def quantization(self) -> dict | None:
        return self.manifest.get("quantization") or None

    def check_engine(self, engine: str) -> None:
        """Raise ArtifactError when ``engine`` ("ort" | "trt") cannot run this artifact's graphs."""
        check_engine_support(self.manifest, engine, str(self.path / MANIFEST_NAME))


def load_artifact(artifact_dir: str | Path) -> Artifact:
    """Reads, validates and checks the files of an artifact directory."""
    root = Path(artifact_dir).expanduser()
    if not root.is_dir():
        raise ArtifactError(f"{root}: not a directory; pass the output directory of `sdar-export`")
    path = root / MANIFEST_NAME
    if not path.is_file():
        raise _fail(str(path), "no manifest.json (is this an sdar-export output directory?)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise _fail(str(path), f"cannot be read as JSON ({exc})") from exc
    validate_manifest(manifest, str(path))
    for name, entry in manifest["graphs"].items():
        if not (root / entry["file"]).is_file():
            raise _fail(
                str(root / entry["file"]), f"graph file of {name!r} listed in manifest.json is missing"
            )
    tok_files = manifest.get("tokenizer", {}).get("files", ["tokenizer.json"])
    for name in tok_files:
        if not (root / name).is_file():
            raise _fail(str(root / name), "tokenizer file listed in manifest.json is missing")
    return Artifact(root, manifest)
