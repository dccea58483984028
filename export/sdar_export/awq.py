"""Activation-aware weight scaling (AWQ-style) before RTN quantization (``sdar-export --awq``).

Idea (Lin et al., AWQ): input channels that carry large activations matter more to a linear's
output than their share of the weight range says. Scaling such a channel's weight column up by
``s_j`` (and its activation down by ``s_j``, folded into whatever produces the activation) leaves
the float network unchanged but gives the column more quantization levels. Per group of linears
that read the same input, ``s = mean|x|^alpha`` (normalised to geometric mean 1 over its range)
with ``alpha`` searched on a grid; ``alpha = 0`` is plain RTN, so the chosen scales never increase
the measured output error.

Calibration: the float network runs the calibration prompts as one batch, full sequence, with the
block-causal mask the model uses (``past_len`` 0, like ``model.full_sequence_logits``). Each prompt
is extended with the mask token to the next block boundary: that is what the first denoising step
of a generation after this prompt sees, so those positions are real inference inputs. Shorter
prompts are then padded with whole blocks of mask tokens up to the longest; a position never sees a
later block, so that padding changes nothing before it and its rows are left out of the statistics.

Groups and where their input scale folds (the exported network stays exact apart from rounding):
  * q/k/v_proj read ``input_layernorm``: the norm weight is divided by ``s``.
  * gate/up_proj read ``post_attention_layernorm``: the norm weight is divided by ``s``.
  * down_proj reads ``silu(gate) * up``: ``up_proj``'s output rows are divided by ``s`` (silu acts
    on gate only, so the product scales by exactly ``1/s``).
  * o_proj reads the attention output, a probability-weighted sum of V: ``v_proj``'s output rows
    are divided by ``s``, but only when every query head has its own KV head. With GQA several
    query heads read one V row, so their o_proj channels would be forced to share one scale; this
    group is skipped then (as AutoAWQ does).
  * MoE layers: the MLP (router + experts) is skipped; its input norm also feeds the float router,
    and the experts each see a different token subset, so one scale per channel fits none of them
    well. Their attention is scaled like a dense layer's.
The error of a candidate is measured exactly as the graph computes it: the scaled weight is
rounded to the artifact dtype, quantized with ``quantize.quantize_rtn`` (same bits, group size,
symmetry, scale dtype), dequantized, and multiplied by ``x / s`` in float32; the error is
``||y_q - y_f|| / ||y_f||`` summed over the group's linears, ``y_f = x W^T`` the float output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ExportError
from .quantize import QuantScheme, quantize_rtn

ALPHAS = tuple(round(0.05 * i, 2) for i in range(21))   # 0, 0.05, ..., 1
MAX_ROWS = 4096          # activation rows used for the error search (the mean uses all of them)
MIN_MEAN = 1e-4          # floor on mean|x|: dead channels must not get a scale of 0

# Small, varied texts: prose, code, chat (ChatML as Qwen3 renders it), numbers, lists. ``\n`` in a
# line of a --calibration file is a newline too, so a file can hold the same kind of prompts.
DEFAULT_PROMPTS = (
    "The quick brown fox jumps over the lazy dog while the farmer counts his sheep.",
    "In 1969, Apollo 11 landed on the Moon; Neil Armstrong was the first person to walk on it.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    "The capital of France is Paris.<|im_end|>",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "sort: 3 1 2 9 7<|im_end|>\n<|im_start|>assistant\n",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen inside chloroplasts.",
    "SELECT name, COUNT(*) FROM orders WHERE total > 100 GROUP BY name ORDER BY 2 DESC;",
    "1, 2, 3, 5, 8, 13, 21, 34, 55, 89 - each number is the sum of the two before it.",
    "Dear team, the meeting moves to Thursday at 10:00. Please bring the quarterly numbers.",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product",
    "<|im_start|>user\nTranslate 'good morning' into German.<|im_end|>\n<|im_start|>assistant\n"
    "Guten Morgen.<|im_end|>",
    "Once upon a time, a small robot wanted to learn how the rivers find their way to the sea.",
)


# --------------------------------------------------------------------------- calibration prompts


def read_calibration(path: str | Path | None) -> tuple[list[str], str]:
    """Prompts from ``path`` (one per line, blank lines skipped, ``\\n`` = newline) or the built-in set.

    Returns (prompts, where) with ``where`` naming the source for messages.
    """
    if path is None:
        return list(DEFAULT_PROMPTS), "the built-in calibration set"
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ExportError(f"--calibration {p}: cannot be read ({e.strerror or e}).") from e
    except UnicodeDecodeError as e:
        raise ExportError(f"--calibration {p}: not UTF-8 text ({e}).") from e
    prompts = [line.replace("\\n", "\n") for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ExportError(f"--calibration {p}: the file has no prompts (it is empty or only blank lines); "
                          "write one prompt per line, or drop --calibration to use the built-in set.")
    return prompts, str(p)


def tokenize_calibration(model_dir: str | Path, prompts: list[str], where: str, max_context: int,
                         vocab_size: int, truncate: bool = False) -> list[list[int]]:
    """Token ids of each prompt with the checkpoint's tokenizer.json; clear errors on bad prompts.

    ``truncate``: cut prompts to ``max_context`` instead of refusing them (the built-in set: the user
    did not write those, and a tokenizer may split them into more tokens than a small context holds).
    """
    from tokenizers import Tokenizer  # noqa: PLC0415

    tj = Path(model_dir) / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(tj))
    except Exception as e:  # tokenizers raises plain Exceptions for missing / broken files
        raise ExportError(f"{tj}: cannot load the tokenizer for the AWQ calibration ({e}).") from e
    out = []
    for i, text in enumerate(prompts, 1):
        ids = tok.encode(text, add_special_tokens=False).ids
        if not ids:
            raise ExportError(f"calibration prompt {i} of {where} has no tokens; remove it or write some "
                              "text.")
        if len(ids) > max_context and truncate:
            ids = ids[:max_context]
        elif len(ids) > max_context:
            raise ExportError(f"calibration prompt {i} of {where} is {len(ids)} tokens long, more than the "
                              f"export's max context {max_context}; shorten or split that prompt (or raise "
                              "--max-context).")
        if max(ids) >= vocab_size:
            raise ExportError(f"calibration prompt {i} of {where}: token id {max(ids)} is outside the "
                              f"model's vocab_size {vocab_size}; the tokenizer does not match the "
                              "checkpoint.")
        out.append(ids)
    return out


def calibration_ids(model_dir: str | Path, path: str | Path | None, max_context: int,
                    vocab_size: int) -> list[list[int]]:
    """The token ids of ``--calibration`` ``path`` (None: the built-in set, cut to the context)."""
    texts, where = read_calibration(path)
    return tokenize_calibration(model_dir, texts, where, max_context, vocab_size, truncate=path is None)


def calibration_batch(prompts: list[list[int]], block_length: int, mask_id: int):
    """(ids [B, S] int64, valid [B, S] bool): mask-token padding, see the module docstring."""
    import torch  # noqa: PLC0415

    lens = [-(-len(p) // block_length) * block_length for p in prompts]   # to the next block boundary
    S = max(lens)
    ids = torch.full((len(prompts), S), mask_id, dtype=torch.int64)
    valid = torch.zeros((len(prompts), S), dtype=torch.bool)
    for b, (p, n) in enumerate(zip(prompts, lens, strict=True)):
        ids[b, :len(p)] = torch.tensor(p, dtype=torch.int64)
        valid[b, :n] = True
    return ids, valid


# --------------------------------------------------------------------------- scale search


@dataclass
class GroupChoice:
    """The scale chosen for one group of linears sharing an input."""

    layer: int
    group: str                  # "qkv" | "o" | "gate_up" | "down"
    alpha: float
    scale: np.ndarray           # [K] float32; the weight columns are multiplied by it
    errors: list[float]         # relative output error per alpha of the grid (errors[0]: RTN)

    @property
    def error(self) -> float:
        return min(self.errors)

    @property
    def rtn_error(self) -> float:
        return self.errors[0]


def scale_for(mean_abs: np.ndarray, alpha: float) -> np.ndarray:
    """``mean|x|^alpha`` normalised so that max * min = 1 (scales spread around 1 both ways)."""
    s = np.maximum(mean_abs, MIN_MEAN).astype(np.float64) ** alpha
    return (s / math.sqrt(s.max() * s.min())).astype(np.float32)


def group_error(x, weights: list[np.ndarray], s: np.ndarray, scheme: QuantScheme, dtype: str,
                refs: list | None = None) -> float:
    """Relative output error of the group with input scale ``s``, as the quantized graph computes it.

    ``x`` [n, K] float32 torch tensor, ``weights`` [N, K] float32 arrays; ``refs``: the float outputs
    ``x W^T`` (computed when None).
    """
    import torch  # noqa: PLC0415

    store = np.float16 if dtype == "float16" else np.float32
    st = torch.from_numpy(s)
    xs = x / st
    num = den = 0.0
    for j, w in enumerate(weights):
        ref = refs[j] if refs is not None else x @ torch.from_numpy(w).T
        ws = (w * s[None, :]).astype(store).astype(np.float32)   # the artifact stores the scaled weight
        wq = quantize_rtn(ws, scheme.bits, scheme.group_size, scheme.symmetric, store).dequantize()
        y = xs @ torch.from_numpy(wq).T
        num += float((y - ref).pow(2).sum())
        den += float(ref.pow(2).sum())
    return math.sqrt(num / max(den, 1e-30))


def search_scale(x, weights: list[np.ndarray], scheme: QuantScheme, dtype: str,
                 alphas: tuple[float, ...] = ALPHAS) -> tuple[float, np.ndarray, list[float]]:
    """Grid search of alpha for one group: (alpha, scale, error per alpha). Ties keep the smaller
    alpha, so alpha 0 (RTN) wins unless scaling strictly helps."""
    import torch  # noqa: PLC0415

    mean_abs = x.abs().mean(0).numpy()
    if x.shape[0] > MAX_ROWS:   # evenly spaced rows keep every prompt represented
        x = x[torch.linspace(0, x.shape[0] - 1, MAX_ROWS).long()]
    refs = [x @ torch.from_numpy(w).T for w in weights]
    errors = [group_error(x, weights, scale_for(mean_abs, a), scheme, dtype, refs) for a in alphas]
    best = int(np.argmin(errors))
    return alphas[best], scale_for(mean_abs, alphas[best]), errors


# --------------------------------------------------------------------------- calibration run


@dataclass
class _Group:
    name: str
    module: str                 # attribute path (in the layer) of the linear whose input is hooked
    linears: list[str]          # HF weight suffixes of the linears reading that input


def layer_groups(cfg, layer: int) -> list[_Group]:
    """The groups of layer ``layer`` that can be scaled (see the module docstring for the skips)."""
    groups = [_Group("qkv", "q_proj", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"])]
    if cfg.num_key_value_heads == cfg.num_attention_heads:   # GQA: o_proj skipped (docstring)
        groups.append(_Group("o", "o_proj", ["self_attn.o_proj"]))
    if not cfg.layer_is_moe(layer):
        groups.append(_Group("gate_up", "mlp.gate_proj", ["mlp.gate_proj", "mlp.up_proj"]))
        groups.append(_Group("down", "mlp.down_proj", ["mlp.down_proj"]))
    return groups


def _check_group_size(source, cfg, scheme: QuantScheme) -> None:
    """The RTN step's divisibility check, before the (longer) calibration."""
    g = scheme.group_size
    if g is None:
        return
    for i in range(cfg.num_hidden_layers):
        for grp in layer_groups(cfg, i):
            for lin in grp.linears:
                name = f"model.layers.{i}.{lin}.weight"
                K = source.shape(name)[1]
                if K % g:
                    raise ExportError(f"--group-size {g} does not divide the input dimension {K} of {name}; "
                                      f"choose a group size that divides {K}, e.g. {K & -K}.")


def _as_source(weights, cfg):
    from .weight_sources import DictWeights  # noqa: PLC0415

    return DictWeights(weights, cfg, None) if isinstance(weights, dict) else weights


def calibrate(weights, cfg, prompts: list[list[int]], scheme: QuantScheme, dtype: str,
              block_length: int, mask_id: int, alphas: tuple[float, ...] = ALPHAS,
              progress: Callable[[str], None] | None = None) -> list[GroupChoice]:
    """Run the float network over the prompts and choose every group's scale.

    ``weights``: a name -> tensor dict or a weight source (sdar_export.weight_sources). The network
    runs one layer at a time, built in float32 from the source when its turn comes (whatever the
    artifact dtype: the search rounds weights itself), so only one layer's weights and activations
    are held at a time; each group's scale is searched in a hook on its first linear.
    """
    import torch  # noqa: PLC0415

    from .model import HFParams, _Layer, rope_and_mask, rope_inv_freq  # noqa: PLC0415
    from .reference import _embedding_rows, layer_weight_names  # noqa: PLC0415

    source = _as_source(weights, cfg)
    _check_group_size(source, cfg, scheme)
    ids, valid = calibration_batch(prompts, block_length, mask_id)
    rows = valid.reshape(-1)
    choices: list[GroupChoice] = []
    L = cfg.num_hidden_layers
    f32 = torch.float32

    def hook_for(i: int, grp: _Group, last: bool, layer_weights: dict):
        def hook(_mod, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])[rows].contiguous()
            ws = [layer_weights[f"model.layers.{i}.{lin}.weight"].numpy() for lin in grp.linears]
            a, s, errs = search_scale(x, ws, scheme, dtype, alphas)
            choices.append(GroupChoice(i, grp.name, a, s, errs))
            if last and progress is not None:
                mine = [c for c in choices if c.layer == i]
                desc = ", ".join(f"{c.group} {c.alpha:.2f}" for c in mine)
                rtn, awq = sum(c.rtn_error for c in mine), sum(c.error for c in mine)
                progress(f"layer {i + 1}/{L}: alpha {desc}; output error {awq / len(mine):.3e} "
                         f"(RTN {rtn / len(mine):.3e})")
        return hook

    with torch.no_grad():
        x = _embedding_rows(source, ids).float()
        cos, sin, mask = rope_and_mask(torch.zeros(1, dtype=torch.int64), ids.shape[1], 0, block_length,
                                       rope_inv_freq(cfg))
        empty = torch.zeros(0, ids.shape[0], cfg.num_key_value_heads, cfg.head_dim, dtype=f32)
        for i in range(L):
            layer_weights = {n: source.get(n).float() for n in layer_weight_names(cfg, i)}
            layer = _Layer(HFParams(layer_weights, f32), i, cfg, f32, f32)
            groups = layer_groups(cfg, i)
            for j, grp in enumerate(groups):
                layer.get_submodule(grp.module).register_forward_pre_hook(
                    hook_for(i, grp, j == len(groups) - 1, layer_weights))
            x, _, _ = layer(x, cos, sin, mask, empty, empty)
            del layer, layer_weights
    return choices


# --------------------------------------------------------------------------- folding


def scale_ops(choices: list[GroupChoice]) -> dict[str, list[tuple[str, np.ndarray]]]:
    """HF weight name -> the scalings folded into it, in order: ("cols", s) multiplies the input
    columns by s, ("rows", s) the output rows, ("div", s) divides a norm's weight by s. Applied
    multiplicatively, so the order of groups does not matter (up_proj gets both its input columns
    and its output rows scaled); each one rounds to the storage dtype."""
    ops: dict[str, list[tuple[str, np.ndarray]]] = {}

    def add(name: str, op: str, s: np.ndarray) -> None:
        ops.setdefault(name, []).append((op, s))

    for c in choices:
        p = f"model.layers.{c.layer}."
        inv = (1.0 / c.scale.astype(np.float64)).astype(np.float32)
        if c.group == "qkv":
            add(p + "input_layernorm.weight", "div", c.scale)
            for lin in ("q_proj", "k_proj", "v_proj"):
                add(p + f"self_attn.{lin}.weight", "cols", c.scale)
        elif c.group == "o":
            add(p + "self_attn.o_proj.weight", "cols", c.scale)
            add(p + "self_attn.v_proj.weight", "rows", inv)
        elif c.group == "gate_up":
            add(p + "post_attention_layernorm.weight", "div", c.scale)
            for lin in ("gate_proj", "up_proj"):
                add(p + f"mlp.{lin}.weight", "cols", c.scale)
        elif c.group == "down":
            add(p + "mlp.down_proj.weight", "cols", c.scale)
            add(p + "mlp.up_proj.weight", "rows", inv)
        else:
            raise ValueError(f"unknown AWQ group {c.group!r}")
    return ops


def scaled(t, ops: list[tuple[str, np.ndarray]]):
    """Tensor ``t`` with its scalings (see :func:`scale_ops`) applied in order, in t's dtype."""
    import torch  # noqa: PLC0415

    for op, s in ops:
        f = torch.from_numpy(s)
        if op == "div":
            t = (t.float() / f).to(t.dtype)
        else:
            t = (t.float() * f.reshape((1, -1) if op == "cols" else (-1, 1))).to(t.dtype)
    return t


def fold_scales(weights: dict, choices: list[GroupChoice]) -> dict:
    """A new weight dict with every group's scale folded in (the float network is unchanged up to
    rounding in the storage dtype)."""
    out = dict(weights)
    for name, ops in scale_ops(choices).items():
        out[name] = scaled(out[name], ops)
    return out


class AwqScaled:
    """A weight source (sdar_export.weight_sources) with the AWQ scales folded into each tensor as it
    is read: the scaled network is never in memory as a whole."""

    def __init__(self, source, choices: list[GroupChoice]):
        self.source, self.ops = source, scale_ops(choices)
        self.config, self.dtype, self.tied = source.config, source.dtype, source.tied

    def names(self) -> list[str]:
        return self.source.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    def get(self, name: str):
        t = self.source.get(name)
        return scaled(t, self.ops[name]) if name in self.ops else t

    def rows(self, name: str, ids):
        from .weight_sources import rows_of  # noqa: PLC0415

        if name in self.ops:
            return self.get(name)[list(ids)]
        return rows_of(self.source, name, ids)


# --------------------------------------------------------------------------- entry point


@dataclass
class AwqResult:
    weights: dict | None          # the scaled weights, when a dict was calibrated (else use ``scaled``)
    choices: list[GroupChoice]
    prompts: int
    tokens: int
    skipped: list[str] = field(default_factory=list)

    def manifest(self) -> dict:
        """The ``quantization.awq`` section of the manifest."""
        alphas = [c.alpha for c in self.choices]
        by_group: dict[str, list[float]] = {}
        for c in self.choices:
            by_group.setdefault(c.group, []).append(c.alpha)
        n = max(1, len(self.choices))
        return {"calibration_prompts": self.prompts, "calibration_tokens": self.tokens,
                "alpha_grid": {"min": ALPHAS[0], "max": ALPHAS[-1], "points": len(ALPHAS)},
                "scaled_groups": len(self.choices),
                "alpha_mean": float(np.mean(alphas)) if alphas else None,
                "alpha_per_layer": by_group,
                "calibration_rel_err": {"rtn": sum(c.rtn_error for c in self.choices) / n,
                                        "awq": sum(c.error for c in self.choices) / n},
                "skipped": self.skipped}


def skipped_groups(cfg) -> list[str]:
    out = []
    if cfg.num_key_value_heads != cfg.num_attention_heads:
        out.append("o_proj (GQA: query heads sharing a KV head cannot have separate scales)")
    if getattr(cfg, "is_moe", False):
        out.append("MoE MLPs (router and experts)")
    return out


def apply_awq(weights, cfg, prompts: list[list[int]], scheme: QuantScheme, dtype: str,
              block_length: int, mask_id: int, progress: Callable[[str], None] | None = None) -> AwqResult:
    """Calibrate on ``prompts`` (token ids); the scaled weights (to be RTN-quantized next) are the
    folded dict when ``weights`` is a dict, else ``AwqScaled(source, result.choices)``."""
    choices = calibrate(weights, cfg, prompts, scheme, dtype, block_length, mask_id, progress=progress)
    folded = fold_scales(weights, choices) if isinstance(weights, dict) else None
    return AwqResult(folded, choices, len(prompts), sum(len(p) for p in prompts), skipped_groups(cfg))
