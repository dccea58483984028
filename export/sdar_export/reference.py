"""The PyTorch network as the reference the exported graphs are validated against, run layer by layer.

Validation runs a handful of steps (:class:`StepCase`: T tokens at ``past_len`` after a bound cache
of P random rows). :class:`ReferenceNetwork` runs all of them through layer 0, then all through
layer 1, and so on, building each layer from the weight source when its turn comes and dropping it
after: one layer's weights are in memory at a time, never the whole network. The layers, the
embedding, RoPE, the mask and the head are :mod:`sdar_export.model`'s own modules and functions, so
the outputs equal ``SDARModel``'s bit for bit (tested).

Every input of a case is drawn from seeded generators, ids and each layer's past K/V from a
generator of their own, so the reference and ONNX Runtime can each make exactly the rows they need
when they need them (ONNX Runtime runs a graph in pieces, see :mod:`sdar_export.ort_segments`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .model import HFParams, _Layer, head_logits, rope_and_mask, rope_inv_freq, to_torch_dtype
from .weight_sources import EMBEDDING, rows_of


@dataclass(frozen=True)
class StepCase:
    """One validation step: ``tokens`` new tokens at ``past_len`` after a bound cache of ``past_rows``
    rows (rows past ``past_len`` hold random values the graph must mask); ``num_logits`` rows of
    logits (0: none). Inputs are drawn from ``seed``."""

    tokens: int
    past_rows: int
    past_len: int
    num_logits: int
    seed: int

    def ids(self, batch: int, vocab_size: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, vocab_size, (batch, self.tokens), generator=g, dtype=torch.int64)

    def past(self, layer: int, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype):
        """(key, value) [past_rows, batch, kv_heads, head_dim] of one layer, finite random values."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + 1 + layer)
        shape = (self.past_rows, batch, kv_heads, head_dim)
        return torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)


@dataclass
class StepOutputs:
    """The reference's outputs of one case, float32: logits [B, num_logits, V] (None without) and the
    K/V of the new tokens per layer [T, B, KVH, D]."""

    logits: np.ndarray | None
    keys: list[np.ndarray]
    values: list[np.ndarray]

    def named(self) -> dict[str, np.ndarray]:
        """By the graphs' output names."""
        out = {} if self.logits is None else {"logits": self.logits}
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            out[f"present_key_{i}"] = k
            out[f"present_value_{i}"] = v
        return out


def layer_weight_names(cfg, i: int) -> list[str]:
    from .checkpoint import expected_tensor_shapes  # noqa: PLC0415

    prefix = f"model.layers.{i}."
    return [n for n in expected_tensor_shapes(cfg) if n.startswith(prefix)]


def _embedding_rows(source, ids: torch.Tensor) -> torch.Tensor:
    return rows_of(source, EMBEDDING, ids.reshape(-1).tolist()).reshape(*ids.shape, -1)


class ReferenceNetwork:
    """Runs :class:`StepCase` s through the network built layer by layer from ``source`` (HF names ->
    tensors of the artifact's storage dtype, see sdar_export.weight_sources)."""

    def __init__(self, source, dtype, compute_dtype=None, block_length: int = 4, batch: int = 1):
        self.source, self.config = source, source.config
        self.sd = to_torch_dtype(dtype)
        self.cd = to_torch_dtype(compute_dtype) if compute_dtype is not None else self.sd
        self.block_length, self.batch = block_length, batch

    def run(self, cases: list[StepCase], progress: Callable[[str], None] | None = None) -> list[StepOutputs]:
        cfg, B, L = self.config, self.batch, self.block_length
        kvh, D = cfg.num_key_value_heads, cfg.head_dim
        inv_freq = rope_inv_freq(cfg)
        with torch.no_grad():
            state = []
            for c in cases:
                ids = c.ids(B, cfg.vocab_size)
                x = _embedding_rows(self.source, ids).to(self.sd).float()
                cos, sin, mask = rope_and_mask(torch.tensor([c.past_len]), c.tokens, c.past_rows, L, inv_freq)
                state.append([x, cos, sin, mask])
            outs = [StepOutputs(None, [], []) for _ in cases]
            for i in range(cfg.num_hidden_layers):
                weights = {n: self.source.get(n) for n in layer_weight_names(cfg, i)}
                layer = _Layer(HFParams(weights, self.sd), i, cfg, self.cd, self.sd)
                del weights
                for c, s, o in zip(cases, state, outs, strict=True):
                    pk, pv = c.past(i, B, kvh, D, self.sd)
                    s[0], k, v = layer(s[0], s[1], s[2], s[3], pk, pv)
                    o.keys.append(k.float().numpy())
                    o.values.append(v.float().numpy())
                del layer
                if progress is not None and (i % 8 == 7 or i == cfg.num_hidden_layers - 1):
                    progress(f"reference: layer {i + 1}/{cfg.num_hidden_layers}")
            if any(c.num_logits for c in cases):
                head = HFParams({"model.norm.weight": self.source.get("model.norm.weight"),
                                 "lm_head.weight": self.source.get("lm_head.weight")}, self.sd)
                norm = head.norm("model.norm.weight", cfg.rms_norm_eps)
                lm_head = head.linear("lm_head.weight", self.cd)
                del head
                for c, s, o in zip(cases, state, outs, strict=True):
                    logits = head_logits(s[0], c.tokens, norm, lm_head, c.num_logits)
                    o.logits = None if logits is None else logits.numpy()
        return outs


class ModelReference:
    """The same outputs from a whole in-memory ``SDARModel`` (small models and tests)."""

    def __init__(self, model, block_length: int, batch: int = 1):
        self.model, self.block_length, self.batch = model, block_length, batch
        self.config = model.config

    def run(self, cases: list[StepCase], progress=None) -> list[StepOutputs]:
        cfg, m = self.model.config, self.model
        out = []
        with torch.no_grad():
            for c in cases:
                ids = c.ids(self.batch, cfg.vocab_size)
                pasts = [c.past(i, self.batch, cfg.num_key_value_heads, cfg.head_dim, m.dtype_)
                         for i in range(cfg.num_hidden_layers)]
                logits, ks, vs = m(ids, torch.tensor([c.past_len]), [p[0] for p in pasts],
                                   [p[1] for p in pasts], self.block_length, c.num_logits)
                out.append(StepOutputs(None if logits is None else logits.numpy(),
                                       [k.float().numpy() for k in ks], [v.float().numpy() for v in vs]))
        return out
