"""Device memory a TensorRT Generator needs, computed before anything is allocated.

    weights  + KV cache + scratch
    weights  : the plan (the built engine holds the weights; before a build: the trt graph's
               initializers, as TensorRT stores them)
    KV cache : max_context x layers x 2 (K, V) x batch x kv_heads x head_dim x bytes per element
    scratch  : TensorRT's activation memory (one allocation shared by every step kind: the built
               plan's own figure, or an estimate of the largest pass before a build) + the
               decoding loop's buffers (logits, ids, token sequence, masks, the unmasking kernels'
               workspaces)

`sdar-export ARTIFACT --engine trt` prints it and refuses to build, and ``Generator`` refuses to load,
when the device's free memory cannot hold it, naming both numbers and the fix (--max-context, --int4).
``python -m sdar_rt.memory_budget`` prints the table of runtime/trt/JETSON.md. No torch.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

GIB = 1 << 30
MIB = 1 << 20
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# Jetson boards share RAM between the CPU and the GPU: what is left for the model after the OS and
# the Python process (tokenizer, ONNX Runtime, CUDA and TensorRT libraries), measured nowhere here:
# an assumption the table states.
JETSON_RESERVE = 2 * GIB
JETSON_BOARDS = (("Orin Nano 8 GB", 8 * GIB), ("Orin NX 16 GB", 16 * GIB), ("AGX Orin 64 GB", 64 * GIB))


@dataclass(frozen=True)
class Shape:
    """The dimensions the budget needs (Qwen3 / SDAR config names)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int


# The released SDAR sizes: Qwen3's dimensions (config.json of Qwen3-0.6B/1.7B/4B/8B).
QWEN3_SHAPES = {
    "0.6B": Shape(28, 1024, 3072, 16, 8, 128, 151936),
    "1.7B": Shape(28, 2048, 6144, 16, 8, 128, 151936),
    "4B": Shape(36, 2560, 9728, 32, 8, 128, 151936),
    "8B": Shape(36, 4096, 12288, 32, 8, 128, 151936),
}


@dataclass(frozen=True)
class DeviceMemoryBudget:
    weights: int
    kv_cache: int
    scratch: int
    scratch_is_estimate: bool = False

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.scratch

    def describe(self) -> str:
        scratch = "scratch (estimate)" if self.scratch_is_estimate else "scratch"
        return (f"weights {gib(self.weights)} + KV cache {gib(self.kv_cache)} + {scratch} "
                f"{gib(self.scratch)} = {gib(self.total)}")


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def kv_cache_bytes(num_layers: int, num_kv_heads: int, head_dim: int, max_context: int, batch: int,
                   dtype: str) -> int:
    return max_context * num_layers * 2 * batch * num_kv_heads * head_dim * ELEMENT_BYTES[dtype]


def loop_buffer_bytes(batch: int, block_length: int, vocab_size: int, max_context: int,
                      prefill_chunk: int) -> int:
    """The GPU decoding loop's own device buffers (runtime/step_buffers, runtime/cuda): float32
    logits [B, L, V], int64 ids, the int64 token sequence and uint8 masks [B, max_context], the
    greedy workspace (64 chunks x 16 bytes per position) and the sampling workspace (~24 bytes per
    logit; created by the first call with temperature > 0, counted here so it never surprises)."""
    positions = batch * block_length
    logits = positions * vocab_size * 4
    ids = batch * max(2 * block_length, prefill_chunk) * 8
    sequence = batch * max_context * (8 + 1)
    greedy = positions * 64 * 16
    sampling = positions * vocab_size * 24 + positions * 32
    return logits + ids + sequence + greedy + sampling


def activation_estimate(shape: Shape, batch: int, block_length: int, prefill_chunk: int, max_context: int,
                        dtype: str) -> int:
    """TensorRT's activation memory before a build (the built plan reports its own): the largest
    pass is a prefill chunk against the longest past; one layer's live tensors at a time (TensorRT
    reuses activation memory across layers): float32 attention scores and probabilities plus their
    half copy, the MLP's three intermediate tensors, the float32 residual stream and norms, and
    the logits of the last L positions."""
    e = ELEMENT_BYTES[dtype]
    T = max(prefill_chunk, 2 * block_length)
    attention = batch * shape.num_heads * T * (max_context + T) * (4 + 4 + e)
    mlp = batch * T * shape.intermediate_size * e * 3
    stream = batch * T * shape.hidden_size * 4 * 4
    logits = batch * block_length * shape.vocab_size * (4 + e)
    return attention + mlp + stream + logits


def weight_bytes(shape: Shape, dtype: str, int4_group: int | None = None) -> int:
    """Weights as TensorRT holds them: the decoder linears (int4: half a byte per weight plus one
    scale per group in the artifact dtype), float32 norms, the embedding table and the LM head as
    two tensors (the exported graph stores the head transposed even when the checkpoint ties it).
    A bfloat16 artifact computes its matmuls in float32 (what ONNX Runtime validates), and
    TensorRT folds the weight casts: four bytes per weight."""
    e = 4 if dtype == "bfloat16" else ELEMENT_BYTES[dtype]
    s = shape
    attention = s.hidden_size * (2 * s.num_heads + 2 * s.num_kv_heads) * s.head_dim   # q, k, v, o
    linears = s.num_layers * (attention + 3 * s.hidden_size * s.intermediate_size)
    body = linears * e if int4_group is None else linears // 2 + linears // int4_group * ELEMENT_BYTES[dtype]
    norms = (s.num_layers * (2 * s.hidden_size + 2 * s.head_dim) + s.hidden_size) * 4
    return body + norms + 2 * s.vocab_size * s.hidden_size * e


def shape_budget(shape: Shape, dtype: str, max_context: int, *, batch: int = 1, block_length: int = 4,
                 prefill_chunk: int = 256, int4_group: int | None = None) -> DeviceMemoryBudget:
    """The budget of a shape before any export (the JETSON.md table)."""
    chunk = min(prefill_chunk, max_context)
    scratch = activation_estimate(shape, batch, block_length, chunk, max_context, dtype) + \
        loop_buffer_bytes(batch, block_length, shape.vocab_size, max_context, chunk)
    kv = kv_cache_bytes(shape.num_layers, shape.num_kv_heads, shape.head_dim, max_context, batch, dtype)
    return DeviceMemoryBudget(weight_bytes(shape, dtype, int4_group), kv, scratch, scratch_is_estimate=True)


def artifact_shape(manifest: dict, config: dict | None = None) -> Shape:
    """The budget's dimensions from an artifact's manifest (and its copied config.json for the MLP
    width, which the manifest does not record; 4 x hidden when it is missing)."""
    m = manifest["model"]
    hidden = int(m.get("hidden_size") or m["num_heads"] * m["head_dim"])
    inter = int((config or {}).get("intermediate_size") or 4 * hidden)
    heads = int(m.get("num_heads") or m["num_kv_heads"])
    return Shape(m["num_layers"], hidden, inter, heads, m["num_kv_heads"], m["head_dim"], m["vocab_size"])


def refusal(budget: DeviceMemoryBudget, free: int, *, what: str, kv_per_token: int, block_length: int,
            max_context: int, quantized: bool) -> str | None:
    """None when ``budget`` fits in ``free`` bytes; otherwise the message naming both numbers and
    the fixes: the --max-context that would fit, and --int4 when the weights are not quantized."""
    if budget.total <= free:
        return None
    room = free - budget.weights - budget.scratch
    fixes = []
    if room > 0 and kv_per_token > 0:
        fits = room // kv_per_token // block_length * block_length
        if 0 < fits < max_context:
            fixes.append(f"re-export with --max-context {fits} or less (the KV cache grows with it)")
    if not quantized:
        fixes.append("re-export with --int4 --quant-format QDQ (4-bit weights: about a quarter of fp16's)")
    fixes.append("close other GPU users (on Jetson the GPU shares RAM with the CPU)")
    return (f"{what} needs {gib(budget.total)} of device memory ({budget.describe()}) but the GPU has "
            f"{gib(free)} free; " + "; or ".join(fixes))


def jetson_table(contexts: tuple[int, ...] = (2048, 4096), group_size: int = 128) -> str:
    """Markdown table of the budget of the released SDAR sizes against the Jetson Orin boards."""
    head = "| model | format | context | weights | KV cache | scratch | total | " + \
        " | ".join(name for name, _ in JETSON_BOARDS) + " |"
    lines = [head, "|" + "---|" * (7 + len(JETSON_BOARDS))]
    for name, shape in QWEN3_SHAPES.items():
        for label, group in (("fp16", None), ("int4", group_size)):
            for ctx in contexts:
                b = shape_budget(shape, "float16", ctx, int4_group=group)
                fits = ["yes" if b.total <= ram - JETSON_RESERVE else "no" for _, ram in JETSON_BOARDS]
                lines.append(f"| {name} | {label} | {ctx} | {gib(b.weights)} | {gib(b.kv_cache)} | "
                             f"{gib(b.scratch)} | {gib(b.total)} | " + " | ".join(fits) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdar_rt.memory_budget",
                                description="Device-memory budget of the released SDAR sizes on Jetson Orin.")
    p.add_argument("--contexts", type=int, nargs="+", default=[2048, 4096])
    a = p.parse_args(argv)
    print(jetson_table(tuple(a.contexts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
