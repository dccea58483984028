"""Weight sources: the network's tensors by HF name, produced one at a time when a stage asks.

Every stage that needs weights (quantization, writing the graphs' weights, the reference network,
the CPU engine's file) reads them through a source, one tensor at a time, so none of them holds the
network as a whole. The sources stack:

* :class:`sdar_export.checkpoint.CheckpointWeights` - the checkpoint's tensors in the export dtype;
* :class:`sdar_export.awq.AwqScaled` - with the AWQ scales folded in (``--awq``);
* :class:`Dequantized` - with each quantized weight replaced by its dequantized value: the network
  the quantized graphs compute;
* :class:`DictWeights` - a name -> tensor dict already in memory (tests, small tools).

Every source has ``config``, ``dtype`` (of the tensors ``get`` returns), ``tied`` (the LM head is
the embedding table), ``names()``, ``shape(name)`` and ``get(name)``.
"""

from __future__ import annotations

import math

import torch

from .model import to_torch_dtype

EMBEDDING = "model.embed_tokens.weight"
HEAD = "lm_head.weight"


class DictWeights:
    """A dict of HF tensors (``lm_head.weight`` absent or the embedding tensor itself: tied)."""

    def __init__(self, weights: dict, cfg, dtype="float32"):
        """``dtype`` None: the tensors as they are."""
        self.weights, self.config = weights, cfg
        self.dtype = to_torch_dtype(dtype) if dtype is not None else weights[EMBEDDING].dtype
        head = weights.get(HEAD)
        self.tied = head is None or head is weights.get(EMBEDDING)

    def names(self) -> list[str]:
        return list(self.weights) + ([HEAD] if HEAD not in self.weights else [])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.weights[EMBEDDING if name == HEAD and self.tied else name].shape)

    def get(self, name: str) -> torch.Tensor:
        t = self.weights[EMBEDDING if name == HEAD and self.tied else name]
        return t.to(self.dtype) if t.is_floating_point() and t.dtype != self.dtype else t


class Dequantized:
    """``source`` with every weight of ``plan`` (sdar_export.quantize.QuantPlan) replaced by its
    dequantized value. A tied head the plan leaves float keeps the float table even when the table
    itself is quantized for the lookup (``--quantize-embeddings`` without ``--quantize-lm-head``)."""

    def __init__(self, source, plan):
        self.source, self.plan = source, plan
        self.config, self.dtype, self.tied = source.config, source.dtype, source.tied

    def names(self) -> list[str]:
        return self.source.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.source.shape(name)

    def get(self, name: str) -> torch.Tensor:
        if name not in self.plan.tensors:
            return self.source.get(name)
        return torch.from_numpy(self.plan.tensors[name].dequantize()).to(self.dtype)

    def rows(self, name: str, ids) -> torch.Tensor:
        if name in self.plan.tensors:
            return torch.from_numpy(self.plan.tensors[name].dequantize_rows(list(ids))).to(self.dtype)
        return rows_of(self.source, name, ids)


def rows_of(source, name: str, ids) -> torch.Tensor:
    """Rows ``ids`` of tensor ``name``: only those rows where the source can read them alone (the
    embedding lookup of a large table), else indexed from the whole tensor."""
    return source.rows(name, ids) if hasattr(source, "rows") else source.get(name)[list(ids)]


def stored_bytes(network, plan, dtype: str) -> int:
    """The network's weights as the artifact stores them, each once: float tensors in the artifact's
    dtype (the tied head counted with the embedding table), quantized ones at their packed size."""
    size = to_torch_dtype(dtype).itemsize
    total = 0
    quantized = set(plan.tensors) if plan is not None else set()
    for name in network.names():
        if name in quantized:
            continue
        if name == HEAD and network.tied and EMBEDDING not in quantized:
            continue
        total += math.prod(network.shape(name)) * size
    return total + (plan.packed_bytes() if plan is not None else 0)
