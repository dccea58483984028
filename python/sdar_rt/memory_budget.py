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

On an integrated GPU (Jetson) the GPU's memory is the board's RAM, and two moments need more than
the steady state above, so they are budgeted too (:func:`build_peak`, :func:`load_peak`):

    build : the parser's host copy of the ONNX weights + TensorRT's engine weights + the builder's
            workspace + the serialized plan in host memory (none with TensorRT's stream writer,
            10.14+): about 3x the weights on TensorRT 10.3
    load  : the engine's weights + the plan in host memory while it is deserialized (none when the
            plan is mapped from its file or streamed, as sdar_rt loads it), then the steady state

What is available is what the OS says (``MemAvailable``: free RAM plus the page cache it can
reclaim, which ``cudaMemGetInfo`` does not count on Jetson), and swap for the pageable host copies
only (device allocations stay in RAM). ``python -m sdar_rt.memory_budget`` prints the table of
runtime/trt/JETSON.md. No torch.
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
# The builder workspace the table assumes (JETSON.md recommends --workspace-mb 1024 on 8 GB boards).
JETSON_WORKSPACE_MB = 1024
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


@dataclass(frozen=True)
class Peak:
    """What one phase holds at once: device allocations (never swapped out) and pageable host
    copies (which swap can take)."""

    what: str
    device: int
    host: int
    parts: str

    @property
    def total(self) -> int:
        return self.device + self.host


@dataclass(frozen=True)
class Available:
    """Memory a phase can use: ``device`` for device allocations; ``host`` for pageable host copies
    (RAM the OS reports available plus free swap); ``shared``: one pool (an integrated GPU), so
    device allocations and host copies draw from the same RAM."""

    device: int
    host: int
    shared: bool
    source: str

    def describe(self) -> str:
        if self.shared:
            swap = self.host - self.device
            return f"{gib(self.device)} of RAM available" + (f" and {gib(swap)} of swap" if swap > 0 else "")
        return f"{gib(self.device)} free on the GPU and {gib(self.host)} of host memory available"


def build_peak(weights: int, workspace: int, *, stream_writer: bool) -> Peak:
    """The engine build's peak: the parser's copy of the ONNX weights (host), TensorRT's engine
    weights and the builder's workspace (device), and the serialized plan (host, about the weights'
    size) unless TensorRT writes it to the file as it serializes (its stream writer, 10.14+)."""
    plan = 0 if stream_writer else weights
    parts = (f"parser's ONNX weights {gib(weights)} + engine weights {gib(weights)} + workspace "
             f"{gib(workspace)}")
    if plan:
        parts += f" + serialized plan {gib(plan)}"
    return Peak("the TensorRT engine build", weights + workspace, weights + plan, parts)


def load_peak(budget: DeviceMemoryBudget, plan_bytes: int, *, plan_in_host_memory: bool) -> Peak:
    """Loading a plan: the engine's weights plus, where the loader reads the plan into host memory,
    its bytes; then the steady state (KV cache and scratch are allocated after the load). The
    larger of the two."""
    host = plan_bytes if plan_in_host_memory else 0
    if budget.weights + host > budget.total:
        return Peak("loading the plan", budget.weights, host,
                    f"engine weights {gib(budget.weights)} + the plan read into host memory {gib(host)}")
    return Peak("the TensorRT Generator", budget.total, 0, budget.describe())


def host_memory() -> tuple[int, int]:
    """(bytes the OS reports available, free swap): psutil reads MemAvailable and SwapFree on Linux,
    the page cache the kernel can reclaim included."""
    import psutil  # noqa: PLC0415

    return int(psutil.virtual_memory().available), int(psutil.swap_memory().free)


def available_memory(integrated: bool, cuda_free: int | None) -> Available | None:
    """What the budget is checked against: on an integrated GPU the OS's available RAM (device
    allocations) and that plus free swap (pageable host copies); on a discrete GPU cudaMemGetInfo's
    free bytes and the host's available memory. None without a GPU."""
    if not integrated and cuda_free is None:
        return None
    ram, swap = host_memory()
    if integrated:
        return Available(ram, ram + swap, True, "MemAvailable")
    return Available(int(cuda_free), ram + swap, False, "cudaMemGetInfo")


def peak_refusal(peak: Peak, available: Available, fixes: list[str]) -> str | None:
    """None when ``peak`` fits ``available``; otherwise one line naming what it needs, what there
    is and the fixes."""
    device_fits = peak.device <= available.device
    if available.shared:
        fits = device_fits and peak.total <= available.host
    else:
        fits = device_fits and peak.host <= available.host
    if fits:
        return None
    fixes = list(fixes)
    if available.shared and device_fits and peak.host:
        fixes.append(f"add swap (the {gib(peak.host)} of host copies can be swapped out; device "
                     "allocations cannot)")
    fixes.append("close other programs" + (" (the GPU shares the board's RAM)" if available.shared else ""))
    return (f"{peak.what} needs {gib(peak.total)} at its peak ({peak.parts}) but there is "
            f"{available.describe()}; " + "; or ".join(fixes))


def board_verdict(run_total: int, build_total: int, ram: int) -> str:
    """A board's column of the JETSON.md table: 'build + run', 'run' (build the plan on a larger
    Orin with the same JetPack, or add swap) or 'no'."""
    room = ram - JETSON_RESERVE
    if build_total <= room:
        return "build + run"
    return "run" if run_total <= room else "no"


def jetson_table(contexts: tuple[int, ...] = (2048, 4096), group_size: int = 128,
                 workspace_mb: int = JETSON_WORKSPACE_MB) -> str:
    """Markdown table of the budget of the released SDAR sizes against the Jetson Orin boards: the
    steady state (run), the engine build's peak on JetPack 6's TensorRT 10.3 (no stream writer) with
    a ``workspace_mb`` builder workspace, and per board whether it can build and run the shape."""
    head = "| model | format | context | weights | KV cache | scratch | run | build peak | " + \
        " | ".join(name for name, _ in JETSON_BOARDS) + " |"
    lines = [head, "|" + "---|" * (8 + len(JETSON_BOARDS))]
    for name, shape in QWEN3_SHAPES.items():
        for label, group in (("fp16", None), ("int4", group_size)):
            for ctx in contexts:
                b = shape_budget(shape, "float16", ctx, int4_group=group)
                build = build_peak(b.weights, workspace_mb * MIB, stream_writer=False)
                verdicts = [board_verdict(b.total, build.total, ram) for _, ram in JETSON_BOARDS]
                lines.append(f"| {name} | {label} | {ctx} | {gib(b.weights)} | {gib(b.kv_cache)} | "
                             f"{gib(b.scratch)} | {gib(b.total)} | {gib(build.total)} | "
                             + " | ".join(verdicts) + " |")
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
