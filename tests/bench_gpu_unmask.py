"""Micro-benchmark of the GPU unmasking step (not a test): kernel time per denoising step at the
real SDAR vocabulary, measured with CUDA events around each step on the default stream; then the
GPU decoding loop's time per step around a no-op engine (host cost of a step: copying the block's
ids, the unmasking launch, the 4-byte "rows active" read; the kernel time above is inside it).

    python tests/bench_gpu_unmask.py [--vocab 151936] [--iters 200] [--json OUT.json] [--artifact ART]

With ``--artifact`` (an artifact with TensorRT plans, in a build with TensorRT) the loop is also
timed around the real TensorRT engine, with its CUDA graphs on and off. ``--json`` writes every
figure printed, for tests/gpu/check.sh's summary.

Each timed step starts from a fully masked block (the mask is reset outside the timed region),
so every position is sampled: the worst case of a step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from sdar_rt import _core


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    parser.add_argument("--artifact", type=Path, default=None,
                        help="also time the loop around this artifact's TensorRT engine, CUDA graphs on/off")
    args = parser.parse_args(argv)
    if not hasattr(_core, "CudaUnmask"):
        print("sdar_rt was built without the CUDA kernels (no nvcc at build time)")
        return 1
    if _core.cuda_device_count() == 0:
        print("no CUDA GPU")
        return 1

    V, B = args.vocab, args.batch
    rng = np.random.default_rng(0)
    configs = [
        ("greedy  low_confidence_dynamic", dict(temperature=0.0)),
        ("greedy  sequential", dict(temperature=0.0, remasking="sequential")),
        ("sample  T=0.8 top_p=0.9", dict(temperature=0.8, top_p=0.9)),
    ]
    dtypes = {"float32": np.float32, "float16": np.float16, "bfloat16": None}
    kernel_rows: list[dict] = []
    print(f"vocab {V}, batch {B}, {args.iters} steps each; median / p10 / p90 microseconds per step")
    for L in (4, 16):
        ws = _core.CudaUnmask(max_batch=B, block_length=L, vocab_size=V, sampling=True)
        logits32 = (rng.standard_normal((B, L, V)) * 3).astype(np.float32)
        masked_all = np.ones((B, L), np.uint8)
        tokens = _core.DeviceArray(8 * B * L)
        masked = _core.DeviceArray(B * L)
        steps = _core.DeviceArray(4 * B)
        start, stop = _core.CudaEvent(), _core.CudaEvent()
        for dtype, np_type in dtypes.items():
            if np_type is None:  # bfloat16: upper half of float32
                host = (logits32.view(np.uint32) >> 16).astype(np.uint16)
            else:
                host = logits32.astype(np_type)
            d_logits = _core.DeviceArray(host.nbytes)
            d_logits.upload(np.ascontiguousarray(host))
            for name, extra in configs:
                iters = args.iters if extra["temperature"] == 0.0 else max(10, args.iters // 10)
                times = []
                for i in range(iters + 5):
                    masked.upload(masked_all)
                    start.record()
                    ws.step(
                        logits=d_logits.ptr,
                        dtype=dtype,
                        tokens=tokens.ptr,
                        tokens_stride=L,
                        masked=masked.ptr,
                        masked_stride=L,
                        row_steps=steps.ptr,
                        rows=B,
                        scheduled=1,
                        **extra,
                    )
                    stop.record()
                    stop.synchronize()
                    if i >= 5:  # warm-up excluded
                        times.append(stop.elapsed_ms_since(start) * 1000.0)
                times.sort()
                q = statistics.quantiles(times, n=10)
                median = statistics.median(times)
                print(f"L={L:<3d} {dtype:<9s} {name:<32s} {median:9.1f} {q[0]:9.1f} {q[-1]:9.1f}")
                kernel_rows.append({"block_length": L, "logits_dtype": dtype, "policy": name.split()[1],
                                    "mode": name.split()[0], "median_us": median, "p10_us": q[0],
                                    "p90_us": q[-1], "steps": iters})
    loop_rows = loop_time_per_step(V, B, rng)
    trt_rows = trt_loop_time_per_step(args.artifact) if args.artifact else []
    if args.json:
        args.json.write_text(json.dumps({"vocab": V, "batch": B, "unmask_kernel": kernel_rows,
                                         "device_loop": loop_rows + trt_rows}, indent=2) + "\n")
    return 0


class FixedLogitsEngine(_core.Engine):
    """Leaves random logits in the core's device buffer once and does nothing per pass, so the
    loop's own cost per step is what a run measures."""

    def __init__(self, rng: np.random.Generator):
        super().__init__()
        self.rng = rng

    def bind(self, b) -> None:
        logits = (self.rng.standard_normal((b.batch, b.block_length, b.vocab_size)) * 3).astype(np.float32)
        _core.cuda_copy_to_device(b.logits, logits)

    def run(self, kind, past_len: int, tokens: int) -> None:
        pass


def loop_time_per_step(V: int, B: int, rng: np.random.Generator) -> list[dict]:
    print("GPU decoding loop, no-op engine (static remasking, 1 token per step); microseconds per step:")
    print("  wall = the whole loop; engine = event time of the no-op pass (the Python call is outside it)")
    rows: list[dict] = []
    for L in (4, 16):
        spec = _core.ModelSpec(num_layers=1, num_kv_heads=1, head_dim=8, vocab_size=V, block_length=L,
                               max_context=1024, batch=B, mask_id=0)
        gen = _core.Generator(spec, FixedLogitsEngine(rng), device="cuda")
        config = _core.GenerationConfig(max_new_tokens=512, denoising_steps=L,
                                        remasking="low_confidence_static")
        prompts = [[1] * L for _ in range(B)]
        gen.generate(prompts, config)  # warm-up
        out = gen.generate(prompts, config)
        rows.append(loop_row(out.stats.to_dict(), L, engine="no-op", cuda_graphs=None))
    return rows


def loop_row(s: dict, L: int, *, engine: str, cuda_graphs: bool | None) -> dict:
    """Prints and returns the loop's wall and host (wall - engine) microseconds per denoising step."""
    steps = sum(s["steps_per_block"])
    wall = 1e6 * s["total_seconds"] / steps
    host = 1e6 * (s["total_seconds"] - s["engine_seconds"]) / steps
    graphs = "" if cuda_graphs is None else f"   CUDA graphs {'on' if cuda_graphs else 'off'}"
    print(f"L={L:<3d} {engine:<9s} wall {wall:8.1f}   wall - engine {host:8.1f}   ({steps} steps){graphs}")
    return {"block_length": L, "engine": engine, "cuda_graphs": cuda_graphs, "steps": steps,
            "wall_us_per_step": wall, "host_us_per_step": host}


def trt_loop_time_per_step(artifact: Path) -> list[dict]:
    """The loop around the artifact's TensorRT engine, CUDA graphs on and off (same prompt, greedy)."""
    from sdar_rt import Generator
    from sdar_rt.artifact import load_artifact
    from sdar_rt.trt_engine import make_trt_engine, tensorrt_available

    if not tensorrt_available():
        print("TensorRT loop: not measured (this build of sdar_rt has no TensorRT)")
        return []
    rows = []
    for graphs in (True, False):
        engine = make_trt_engine(load_artifact(artifact), cuda_graphs=graphs)
        gen = Generator(artifact, engine=engine, device="cuda")
        ids = [1] * (2 * gen.spec.block_length)
        gen.generate(prompt_ids=ids, max_new_tokens=64)  # warm-up (and graph capture)
        out = gen.generate(prompt_ids=ids, max_new_tokens=256)
        rows.append(loop_row(out.stats, gen.spec.block_length, engine="tensorrt", cuda_graphs=graphs))
    return rows


if __name__ == "__main__":
    sys.exit(main())
