"""Load a Hugging Face SDAR checkpoint directory without ``trust_remote_code``.

Supports a single ``model.safetensors`` or shards listed in ``model.safetensors.index.json``;
bf16/fp16/fp32 stored tensors are cast to the requested torch dtype. Every expected tensor is
checked for presence and shape, with errors naming the tensor, the file, and expected vs found.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import SDARConfig
from .errors import CheckpointError

MASK_TOKEN = "<|MASK|>"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def expected_tensor_shapes(cfg: SDARConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor the network needs (``lm_head.weight`` included, tied or not)."""
    H, D = cfg.hidden_size, cfg.head_dim
    nh, kvh = cfg.num_attention_heads, cfg.num_key_value_heads
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (cfg.vocab_size, H)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = (H,)
        s[p + "post_attention_layernorm.weight"] = (H,)
        s[p + "self_attn.q_proj.weight"] = (nh * D, H)
        s[p + "self_attn.k_proj.weight"] = (kvh * D, H)
        s[p + "self_attn.v_proj.weight"] = (kvh * D, H)
        s[p + "self_attn.o_proj.weight"] = (H, nh * D)
        s[p + "self_attn.q_norm.weight"] = (D,)
        s[p + "self_attn.k_norm.weight"] = (D,)
        if cfg.layer_is_moe(i):
            E, Im = cfg.num_experts, cfg.moe_intermediate_size
            s[p + "mlp.gate.weight"] = (E, H)
            for e in range(E):
                q = f"{p}mlp.experts.{e}."
                s[q + "gate_proj.weight"] = (Im, H)
                s[q + "up_proj.weight"] = (Im, H)
                s[q + "down_proj.weight"] = (H, Im)
        else:
            Im = cfg.intermediate_size
            s[p + "mlp.gate_proj.weight"] = (Im, H)
            s[p + "mlp.up_proj.weight"] = (Im, H)
            s[p + "mlp.down_proj.weight"] = (H, Im)
    s["model.norm.weight"] = (H,)
    s["lm_head.weight"] = (cfg.vocab_size, H)
    return s


def weight_files(model_dir: str | Path) -> tuple[list[Path], dict[str, Path]]:
    """Return (files, tensor name -> file). Names map is empty for a single unindexed file."""
    d = Path(model_dir)
    idx = d / INDEX_FILE
    if idx.exists():
        try:
            index = json.loads(idx.read_text(encoding="utf-8"))
            wm = index["weight_map"]
            if not isinstance(wm, dict):
                raise TypeError("weight_map is not an object")
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{idx}: corrupt shard index ({e}). Re-download {INDEX_FILE}.") from e
        mapping = {k: d / v for k, v in wm.items()}
        files = sorted(set(mapping.values()))
        for f in files:
            if not f.exists():
                raise CheckpointError(f"{f}: shard listed in {idx.name} is missing. Re-download it.")
        return files, mapping
    single = d / SINGLE_FILE
    if single.exists():
        return [single], {}
    others = sorted(d.glob("*.safetensors"))
    if len(others) == 1:
        return others, {}
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory not found.")
    bins = sorted(d.glob("*.bin"))
    hint = (" Found PyTorch .bin weights; convert them to safetensors first." if bins else "")
    raise CheckpointError(
        f"{d}: no weights found (expected {SINGLE_FILE} or {INDEX_FILE} with its shards).{hint}")


def checkpoint_sha256(model_dir: str | Path) -> str:
    """sha256 over config.json and every weight file (plus the index when sharded), in name order."""
    d = Path(model_dir)
    files, _ = weight_files(d)
    parts = [d / "config.json"] + ([d / INDEX_FILE] if (d / INDEX_FILE).exists() else []) + files
    h = hashlib.sha256()
    for p in sorted(set(parts), key=lambda p: p.name):
        h.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _torch_dtype(name):
    import torch

    if isinstance(name, torch.dtype):
        return name
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise ValueError(f"unsupported dtype {name!r}; use float32, float16 or bfloat16")
    return table[name]


_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class CheckpointWeights:
    """The checkpoint's tensors (HF names) in the export dtype, read one at a time.

    Opening checks every tensor the network needs from the safetensors headers alone (present, shape,
    floating point), with errors naming the tensor, the file, and expected vs found. ``get`` maps the
    tensor's file, converts that one tensor and releases the mapping with it, so the checkpoint is
    never in memory as a whole. A missing ``lm_head.weight`` is the tied embedding table.
    """

    def __init__(self, model_dir: str | Path, cfg: SDARConfig, dtype="float32"):
        from safetensors import SafetensorError, safe_open

        self.config = cfg
        self.dtype = _torch_dtype(dtype)
        files, mapping = weight_files(model_dir)
        self.expected = expected_tensor_shapes(cfg)
        where: dict[str, Path] = {}
        found: dict[str, tuple[list[int], str]] = {}
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():  # noqa: SIM118 - safe_open handle is not a dict
                        if k in where:
                            continue
                        where[k] = f
                        if k in self.expected:
                            sl = h.get_slice(k)
                            found[k] = (list(sl.get_shape()), sl.get_dtype())
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(f"{f}: cannot read safetensors file ({e}). The file is corrupt or "
                                      "truncated; re-download it.") from e
        for k, f in mapping.items():
            if k in self.expected and k not in where:
                raise CheckpointError(f"{f}: tensor {k!r} is listed in {INDEX_FILE} but absent from "
                                      "the shard. Re-download the shard.")
        # Tied when the head is absent (released Qwen3 small models set tie_word_embeddings and omit it).
        self.tied = "lm_head.weight" not in where
        for name, shape in self.expected.items():
            if name == "lm_head.weight" and self.tied:
                continue
            if name not in where:
                hint = files[0] if len(files) == 1 else f"the shards of {INDEX_FILE}"
                raise CheckpointError(
                    f"{hint}: tensor {name!r} is missing (config.json says {cfg.num_hidden_layers} layers, "
                    f"model_type {cfg.model_type}). The checkpoint is incomplete or does not match "
                    "config.json.")
            got, dt = found[name]
            if tuple(got) != shape:
                raise CheckpointError(
                    f"{where[name]}: tensor {name!r} has shape {got}, expected {list(shape)} from "
                    "config.json. The weights do not match the config.")
            if dt not in _FLOAT_DTYPES:
                raise CheckpointError(f"{where[name]}: tensor {name!r} has dtype {dt}; expected a floating "
                                      "point tensor (quantized checkpoints are not supported).")
        self.where = where

    def names(self) -> list[str]:
        """Every tensor the network reads, ``lm_head.weight`` included (tied or not)."""
        return list(self.expected)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.expected[name]

    def source_name(self, name: str) -> str:
        return "model.embed_tokens.weight" if name == "lm_head.weight" and self.tied else name

    def get(self, name: str):
        """One tensor in the export dtype (contiguous)."""
        from safetensors import safe_open

        src = self.source_name(name)
        with safe_open(str(self.where[src]), framework="pt") as h:
            return h.get_tensor(src).to(self.dtype).contiguous()

    def rows(self, name: str, ids) -> object:
        """Rows ``ids`` (a 1-D int sequence) of a 2-D tensor in the export dtype, read row by row."""
        import torch
        from safetensors import safe_open

        src = self.source_name(name)
        with safe_open(str(self.where[src]), framework="pt") as h:
            sl = h.get_slice(src)
            return torch.cat([sl[int(i):int(i) + 1] for i in ids]).to(self.dtype).contiguous()


def load_weights(model_dir: str | Path, cfg: SDARConfig, dtype="float32") -> dict:
    """Load and check every expected tensor; returns name -> torch tensor in ``dtype`` (the whole
    checkpoint in memory: tests and tools on small models; the exporter reads tensor by tensor)."""
    reader = CheckpointWeights(model_dir, cfg, dtype)
    out = {name: reader.get(name) for name in reader.names() if reader.source_name(name) == name}
    if reader.tied:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def read_exportable_config(model_dir: Path) -> SDARConfig:
    """The checkpoint's config, refusing what sdar-export cannot export (before any weight is read)."""
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


def read_eos_ids(model_dir: str | Path) -> list[int]:
    """EOS ids from generation_config.json (int or list); falls back to config.json's eos_token_id."""
    d = Path(model_dir)
    for fname in ("generation_config.json", "config.json"):
        p = d / fname
        if not p.exists():
            continue
        try:
            g = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{p}: corrupt JSON ({e}). Re-download {fname}.") from e
        e = g.get("eos_token_id")
        if e is None:
            continue
        ids = [e] if isinstance(e, int) else list(e)
        if not all(isinstance(i, int) for i in ids):
            raise CheckpointError(f"{p}: eos_token_id must be an int or a list of ints, found {e!r}.")
        return ids
    raise CheckpointError(f"{d / 'generation_config.json'}: no eos_token_id found (nor in config.json); "
                          "add \"eos_token_id\": [<id>, ...] to generation_config.json.")


def _load_tokenizer_json(model_dir: str | Path) -> tuple[Path, dict]:
    p = Path(model_dir) / "tokenizer.json"
    if not p.exists():
        raise CheckpointError(f"{p}: not found. The checkpoint must ship a Hugging Face tokenizer.json.")
    try:
        return p, json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{p}: corrupt JSON ({e}). Re-download tokenizer.json.") from e


def token_id(model_dir: str | Path, token: str) -> int | None:
    _, tj = _load_tokenizer_json(model_dir)
    for a in tj.get("added_tokens") or []:
        if a.get("content") == token:
            return int(a["id"])
    vocab = (tj.get("model") or {}).get("vocab")
    if isinstance(vocab, dict) and token in vocab:
        return int(vocab[token])
    return None


def read_mask_id(model_dir: str | Path) -> int:
    p, _ = _load_tokenizer_json(model_dir)
    mid = token_id(model_dir, MASK_TOKEN)
    if mid is None:
        raise CheckpointError(
            f"{p}: the mask token {MASK_TOKEN!r} is not in the tokenizer. SDAR models need it for "
            "block diffusion; use the tokenizer shipped with the SDAR checkpoint (not the base Qwen3 one).")
    return mid


def read_pad_id(model_dir: str | Path, eos_ids: list[int]) -> int:
    d = Path(model_dir)
    p = d / "generation_config.json"
    if p.exists():
        try:
            g = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(g.get("pad_token_id"), int):
                return g["pad_token_id"]
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    tid = token_id(d, "<|endoftext|>")
    if tid is not None:
        return tid
    return eos_ids[0] if eos_ids else 0


@dataclass
class Checkpoint:
    path: Path
    config: SDARConfig
    weights: dict | CheckpointWeights
    eos_ids: list[int]
    mask_id: int
    pad_id: int
    sha256: str
    files: list[Path] = field(default_factory=list)


def load_checkpoint(model_dir: str | Path, dtype="float32", with_weights: bool | str = True) -> Checkpoint:
    """Read config, tokens and (optionally) weights of a checkpoint dir, checking everything.

    ``with_weights``: True loads every tensor into ``weights`` (a dict); "lazy" makes ``weights`` a
    :class:`CheckpointWeights` that reads them one at a time (the exporter); False leaves it empty.
    """
    d = Path(model_dir)
    if not d.exists():
        raise CheckpointError(f"{d}: checkpoint directory not found.")
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory; pass the checkpoint directory (holding config.json).")
    cfg = SDARConfig.from_file(d)
    mask_id = read_mask_id(d)
    eos = read_eos_ids(d)
    if not 0 <= mask_id < cfg.vocab_size:
        raise CheckpointError(f"{d / 'tokenizer.json'}: mask id {mask_id} is outside the model's "
                              f"vocab_size {cfg.vocab_size} (config.json).")
    files, _ = weight_files(d)
    if with_weights == "lazy":
        weights = CheckpointWeights(d, cfg, dtype)
    else:
        weights = load_weights(d, cfg, dtype) if with_weights else {}
    return Checkpoint(path=d, config=cfg, weights=weights, eos_ids=eos, mask_id=mask_id,
                      pad_id=read_pad_id(d, eos), sha256=checkpoint_sha256(d), files=files)
