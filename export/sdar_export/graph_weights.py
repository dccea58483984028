"""The values of a traced graph skeleton's parameters: written to the shared weights file tensor by
tensor, and bound into each graph in place of the parameter inputs the tracer left.

A parameter is made from the checkpoint by its :class:`sdar_export.model.GraphWeight` recipe (the
HF tensors, transposed or stacked, in the graph's dtype) and becomes:

* an external-data initializer named by its content (1 KiB or more), written once for all graphs;
* an in-graph initializer with the same content name (smaller ones);
* for a weight the quantization plan replaces, a data-less stub under the name of its dequantized
  value (the name ``sdar_export.quantize.rewrite_graph`` looks for); the rewrite removes it;
* for the LM head of a model with tied embeddings, ``Transpose(embedding table)``: the table is then
  stored once instead of once more transposed (ONNX Runtime and TensorRT fold the Transpose when
  they load the graph, so they run the same product as from a transposed copy).
"""

from __future__ import annotations

import math

import torch

from .weight_store import MIN_BYTES, WeightStore, content_name

PENDING_QUANTIZED = "pending-quantized"   # location of the stubs the quantization rewrite replaces
_CHUNK_BYTES = 64 << 20
_ONNX_TYPES = {torch.float32: 1, torch.float16: 10, torch.bfloat16: 16}


def onnx_type(dtype: torch.dtype) -> int:
    return _ONNX_TYPES[dtype]


def tensor_chunks(t: torch.Tensor):
    """A tensor's bytes in row-major order, in pieces of about 64 MiB (no copy of the whole)."""
    t = t.contiguous()
    flat = t.view(-1).view(torch.uint8)
    for start in range(0, flat.numel(), _CHUNK_BYTES):
        yield memoryview(flat[start:start + _CHUNK_BYTES].numpy())


def transposed_chunks(w: torch.Tensor):
    """The bytes of ``w.t()`` ([in, out] from an [out, in] matrix), row block by row block."""
    out_dim, in_dim = w.shape
    rows = max(1, _CHUNK_BYTES // max(1, out_dim * w.element_size()))
    for k in range(0, in_dim, rows):
        yield from tensor_chunks(w[:, k:k + rows].t())


class GraphWeights:
    """Makes (and caches) the initializer of each recipe from ``source`` (HF names -> tensors of the
    network the graphs compute) into ``store``; ``quantized`` maps the HF names the quantization
    plan replaces to the content name of their dequantized graph tensor."""

    def __init__(self, source, store: WeightStore, quantized: dict[str, str] | None = None):
        self.source = source
        self.store = store
        self.quantized = quantized or {}
        self._made: dict = {}

    def _recipe_chunks(self, recipe):
        if recipe.layout == "experts":
            for name in recipe.names:
                yield from transposed_chunks(self.source.get(name).to(recipe.dtype))
            return
        t = self.source.get(recipe.names[0]).to(recipe.dtype)
        yield from (transposed_chunks(t) if recipe.layout == "transposed" else tensor_chunks(t))

    def initializer(self, recipe):
        """The TensorProto (external stub, small in-graph tensor, or quantized stub) of a recipe."""
        from onnx import TensorProto

        if recipe in self._made:
            return self._made[recipe]
        elem = onnx_type(recipe.dtype)
        q = self._quantized_name(recipe)
        if q is not None:
            t = TensorProto(name=q, data_type=elem, dims=recipe.shape, data_location=TensorProto.EXTERNAL)
            e = t.external_data.add()
            e.key, e.value = "location", PENDING_QUANTIZED
        elif math.prod(recipe.shape) * recipe.dtype.itemsize < MIN_BYTES:
            data = b"".join(bytes(c) for c in self._recipe_chunks(recipe))
            t = TensorProto(name=content_name(elem, recipe.shape, [data]), data_type=elem, dims=recipe.shape,
                            raw_data=data)
        else:
            t = self.store.add(elem, recipe.shape, self._recipe_chunks(recipe))
        self._made[recipe] = t
        return t

    def _quantized_name(self, recipe) -> str | None:
        key = recipe.names if recipe.layout == "experts" else recipe.names[0]
        return self.quantized.get(key)

    def head_reads_embedding(self, head, embedding) -> bool:
        """The tied float LM head can be Transpose(embedding table): same table, same dtype, neither
        quantized."""
        return (getattr(self.source, "tied", False) and head.names == ("lm_head.weight",)
                and head.layout == "transposed" and embedding.layout == "as_is"
                and head.dtype == embedding.dtype
                and self._quantized_name(head) is None and self._quantized_name(embedding) is None)

    def bind(self, m, recipes: dict) -> None:
        """Replace the parameter inputs of traced graph ``m`` (input name -> recipe) by initializers
        (and the tied head's Transpose)."""
        from onnx import helper

        from .ort_graph import prepend_nodes  # noqa: PLC0415

        params = [i.name for i in m.graph.input if i.name in recipes]
        traced = {recipes[n] for n in params}
        embedding = next((r for r in recipes.values() if r.names == ("model.embed_tokens.weight",)), None)
        front, inits, rename = [], {}, {}
        for name in params:
            recipe = recipes[name]
            if embedding is not None and self.head_reads_embedding(recipe, embedding):
                table = self.initializer(embedding)
                if embedding not in traced:     # a graph without the embedding (never traced so)
                    inits[table.name] = table
                front.append(helper.make_node("Transpose", [table.name], [name],
                                              name="/model/lm_head/Transpose", perm=[1, 0]))
                continue
            t = self.initializer(recipe)
            inits[t.name] = t
            rename[name] = t.name
        for node in m.graph.node:
            for i, x in enumerate(node.input):
                if x in rename:
                    node.input[i] = rename[x]
        keep = [i for i in m.graph.input if i.name not in recipes]
        del m.graph.input[:]
        m.graph.input.extend(keep)
        m.graph.initializer.extend(inits.values())
        prepend_nodes(m, front)


def pending_quantized(m) -> list[str]:
    """Quantized stubs left in graph ``m`` (the rewrite replaces every one a node reads)."""
    return [t.name for t in m.graph.initializer
            if any(e.key == "location" and e.value == PENDING_QUANTIZED for e in t.external_data)]
