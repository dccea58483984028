"""SDARConfig: the model hyper-parameters, read from a checkpoint's ``config.json``.

SDAR checkpoints use Qwen3 / Qwen3-MoE field names with ``model_type`` ``sdar`` or ``sdar_moe``.
No torch import here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CheckpointError

SUPPORTED_MODEL_TYPES = ("sdar", "sdar_moe")
# Plain autoregressive Qwen3 checkpoints share the network, so the loader reads them (the tiny task's
# evaluation decodes its AR model this way), but they are not SDAR models: sdar-export refuses them
# (see ``autoregressive``).
_MODEL_TYPE_ALIASES = {"qwen3": "sdar", "qwen3_moe": "sdar_moe"}
SUPPORTED_ROPE_TYPES = (None, "default", "linear")


@dataclass
class SDARConfig:
    model_type: str = "sdar"
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    vocab_size: int = 512
    max_position_embeddings: int = 4096
    torch_dtype: str = "float32"
    attention_bias: bool = False
    # MoE (model_type sdar_moe)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    declared_model_type: str = ""   # config.json's model_type before aliasing
    extra: dict = field(default_factory=dict, repr=False)

    # ---- derived -------------------------------------------------------------------------
    @property
    def autoregressive(self) -> bool:
        """config.json declares a plain autoregressive Qwen3 model, not an SDAR one."""
        return self.declared_model_type in _MODEL_TYPE_ALIASES

    @property
    def is_moe(self) -> bool:
        return self.model_type == "sdar_moe"

    @property
    def num_layers(self) -> int:
        return self.num_hidden_layers

    def layer_is_moe(self, i: int) -> bool:
        """Qwen3-MoE rule: sparse MLP on layer i iff not in mlp_only_layers and (i+1) % step == 0."""
        if not self.is_moe or self.num_experts <= 0:
            return False
        if i in self.mlp_only_layers:
            return False
        step = self.decoder_sparse_step
        return step > 0 and (i + 1) % step == 0

    @property
    def rope_type(self) -> str | None:
        if not self.rope_scaling:
            return None
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type"))

    @property
    def rope_linear_factor(self) -> float:
        if self.rope_type == "linear":
            return float(self.rope_scaling["factor"])
        return 1.0

    # ---- io --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        d.pop("declared_model_type")
        out = dict(extra)
        out.update(d)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> SDARConfig:
        if not isinstance(d, dict):
            raise CheckpointError(f"{source}: expected a JSON object, found {type(d).__name__}. "
                                  "Re-download the checkpoint's config.json.")
        mt = d.get("model_type")
        if mt is None:
            raise CheckpointError(f"{source}: no 'model_type' field; an SDAR checkpoint has "
                                  f"model_type one of {SUPPORTED_MODEL_TYPES}.")
        mt = _MODEL_TYPE_ALIASES.get(mt, mt)
        if mt not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(f"{source}: model_type {d.get('model_type')!r} is not supported; "
                                  f"expected one of {SUPPORTED_MODEL_TYPES} (an SDAR checkpoint).")
        required = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "vocab_size"]
        if mt == "sdar_moe":
            required += ["num_experts", "num_experts_per_tok", "moe_intermediate_size"]
        missing = [k for k in required if k not in d or d[k] is None]
        if missing:
            raise CheckpointError(f"{source}: missing required field(s) {missing}. "
                                  "The checkpoint's config.json is incomplete; re-download it.")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kw: dict[str, Any] = {k: v for k, v in d.items() if k in names}
        kw["model_type"] = mt
        kw["declared_model_type"] = d["model_type"]
        if kw.get("num_key_value_heads") is None:
            kw["num_key_value_heads"] = d["num_attention_heads"]
        if kw.get("head_dim") is None:
            kw["head_dim"] = d["hidden_size"] // d["num_attention_heads"]
        if kw.get("mlp_only_layers") is None:
            kw["mlp_only_layers"] = []
        if "torch_dtype" not in d and "dtype" in d:  # newer transformers write "dtype"
            kw["torch_dtype"] = d["dtype"]
        if kw.get("torch_dtype") is None:
            kw["torch_dtype"] = "float32"
        rp = d.get("rope_parameters") or {}  # transformers >= 5 folds theta/scaling into this
        if kw.get("rope_theta") is None:
            kw["rope_theta"] = rp.get("rope_theta", 1_000_000.0)
        if not kw.get("rope_scaling") and rp.get("rope_type", "default") != "default":
            kw["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
        for k in ("rms_norm_eps", "max_position_embeddings", "tie_word_embeddings", "norm_topk_prob",
                  "decoder_sparse_step"):
            if k in kw and kw[k] is None:
                kw.pop(k)
        kw["extra"] = {k: v for k, v in d.items() if k not in names}
        cfg = cls(**kw)
        cfg.check(source)
        return cfg

    def check(self, source: str = "config.json") -> None:
        ints = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings"]
        for k in ints:
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise CheckpointError(f"{source}: field {k!r} must be a positive integer, found {v!r}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"{source}: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}).")
        if self.head_dim % 2:
            raise CheckpointError(f"{source}: head_dim must be even for RoPE, found {self.head_dim}.")
        if self.attention_bias:
            raise CheckpointError(f"{source}: attention_bias=true is not supported (Qwen3 has none).")
        rt = self.rope_type
        if rt not in SUPPORTED_ROPE_TYPES:
            raise CheckpointError(
                f"{source}: rope_scaling type {rt!r} is not supported yet (supported: none, 'linear'). "
                "Remove rope_scaling from config.json to run at the native context length.")
        if rt == "linear":
            f = self.rope_scaling.get("factor")
            if not isinstance(f, (int, float)) or f <= 0:
                raise CheckpointError(f"{source}: rope_scaling 'linear' needs a positive 'factor', "
                                      f"found {f!r}.")
        if self.torch_dtype not in ("float32", "float16", "bfloat16"):
            raise CheckpointError(f"{source}: torch_dtype {self.torch_dtype!r} is not one of "
                                  "float32, float16, bfloat16.")
        if self.is_moe:
            if self.num_experts <= 0 or not (0 < self.num_experts_per_tok <= self.num_experts):
                raise CheckpointError(
                    f"{source}: need 0 < num_experts_per_tok ({self.num_experts_per_tok}) <= "
                    f"num_experts ({self.num_experts}).")
            if self.moe_intermediate_size <= 0:
                raise CheckpointError(f"{source}: moe_intermediate_size must be positive.")

    @classmethod
    def from_file(cls, path: str | Path) -> SDARConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise CheckpointError(
                f"{path}: not found. A checkpoint directory must contain config.json (the Hugging Face "
                "model config); point sdar-export at the directory holding config.json and "
                "*.safetensors.")
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt JSON ({e}). Re-download config.json.") from e
        return cls.from_dict(d, source=str(path))

    # the released name
    from_pretrained = from_file


def load_config(model_dir: str | Path) -> SDARConfig:
    return SDARConfig.from_file(model_dir)


def trained_block_length(model_dir: str | Path) -> int | None:
    """The block length the checkpoint was trained with: config.json's ``block_size``, which the released
    SDAR checkpoints carry (4, or 8/16/32/64 for their -b variants); None when it says none."""
    try:
        size = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get("block_size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None
