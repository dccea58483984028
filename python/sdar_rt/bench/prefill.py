"""Prompt processing (prefill) speed of the native CPU engine: the GEMM path against the small-M kernels.

    python -m sdar_rt.bench.prefill ART [ART ...] [--tokens 512] [--threads 2] [--rounds 7]
                                    [--kernels auto] [--paths gemm small-m] [--json OUT]

For each artifact (exported with the CPU engine's weights), one Generator per matmul path in the
same process, on the same mapped weights:
  * ``gemm``: float32 matmuls of many rows run as a blocked GEMM (the default);
  * ``small-m``: every matmul runs the small-M kernels of decoding (``SDAR_CPU_GEMM_MIN_ROWS=0``),
    the path before the GEMM existed.
Each round prefills the same prompt of ``--tokens`` random token ids once per path, alternately (the
order reversed every other round), so both paths see the same load on a shared host; a call
generates one block after the prompt, and the prompt's tokens per second are the prompt length over
the call's ``prefill_seconds`` (the prefill's chunks of ``prefill_chunk`` tokens, as in any call).
Reported per path: the median round, the slowest and fastest, every round; the ratio of the paths per
round; whether both generated the same tokens (they must: the GEMM gives the same bits as the
small-M kernels).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

from .. import _core
from .spread import spread

PATHS = {"gemm": None, "small-m": "0"}  # SDAR_CPU_GEMM_MIN_ROWS for each path (None: the default)
ENV = "SDAR_CPU_GEMM_MIN_ROWS"
SETTLE_SECONDS = 0.05  # idle before each call: the other engine's workers stop spinning


def _log(msg: str) -> None:
    print(f"sdar_rt.bench.prefill: {msg}", file=sys.stderr, flush=True)


def _generator(path: str, threads: int, kernels: str, min_rows: str | None):
    """A Generator whose CPU engine reads ``min_rows`` from the environment when it is built."""
    from ..artifact import load_artifact
    from ..cpu_engine import make_cpu_engine
    from ..generator import Generator

    saved = os.environ.get(ENV)
    try:
        if min_rows is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = min_rows
        engine = make_cpu_engine(load_artifact(path), threads=threads, kernels=kernels)
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved
    return Generator(path, engine=engine)


def bench_artifact(path: str, args) -> dict:
    gens = {name: _generator(path, args.threads, args.kernels, PATHS[name]) for name in args.paths}
    first = next(iter(gens.values()))
    a = first.artifact
    L = first.spec.block_length
    if args.tokens + L > a.max_context:
        raise ValueError(f"{path}: a {args.tokens}-token prompt and one block do not fit its context of "
                         f"{a.max_context}; export with a larger --max-context or pass fewer --tokens")
    rng = np.random.default_rng(args.seed)
    prompt = [int(t) for t in rng.integers(0, min(1000, a.model["vocab_size"]), args.tokens)]
    outputs: dict[str, list[int]] = {}
    for name, g in gens.items():  # warm up: workspaces, caches, thread wake-up
        outputs[name] = g.generate(prompt_ids=prompt, max_new_tokens=L).token_ids
    rates: dict[str, list[float]] = {name: [] for name in gens}
    for r in range(args.rounds):
        order = list(gens.items()) if r % 2 == 0 else list(gens.items())[::-1]  # neither path always first
        for name, g in order:
            time.sleep(SETTLE_SECONDS)
            out = g.generate(prompt_ids=prompt, max_new_tokens=L)
            rates[name].append(args.tokens / out.stats["prefill_seconds"])
            if out.token_ids != outputs[name]:
                raise RuntimeError(f"{path}: the {name} path generated different tokens in round {r + 1}")
        _log(f"{path}: round {r + 1}/{args.rounds}: " +
             ", ".join(f"{n} {v[-1]:.1f} prompt tokens/s" for n, v in rates.items()))
    q = a.quantization or {}
    res = {"artifact": os.path.basename(os.path.normpath(path)), "weights": q.get("weights", a.dtype),
           "kernels": first.engine.kernels, "threads": first.engine.threads, "prompt_tokens": args.tokens,
           "prefill_chunk": getattr(first.spec, "prefill_chunk", None),
           "prompt_tokens_per_second": {n: spread(v) for n, v in rates.items()},
           "same_tokens": len({tuple(t) for t in outputs.values()}) == 1}
    if "gemm" in rates and "small-m" in rates:
        pairs = zip(rates["gemm"], rates["small-m"], strict=True)
        res["gemm_over_small_m"] = spread([g / s for g, s in pairs])
    return res


def _table(res: dict) -> str:
    lines = [f"{res['artifact']}: {res['weights']} weights, kernels {res['kernels']}, "
             f"{res['threads']} threads, {res['prompt_tokens']}-token prompt",
             "  path      prompt tokens/s (median [min, max] of the rounds)"]
    for name, s in res["prompt_tokens_per_second"].items():
        lines.append(f"  {name:8s}  {s['median']:8.1f} [{s['min']:.1f}, {s['max']:.1f}]")
    if "gemm_over_small_m" in res:
        s = res["gemm_over_small_m"]
        lines.append(f"  gemm / small-m per round: {s['median']:.2f}x [{s['min']:.2f}, {s['max']:.2f}]")
    lines.append(f"  same tokens on every path: {res['same_tokens']}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdar_rt.bench.prefill", description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="+", help="artifact dirs exported with the CPU engine's weights")
    p.add_argument("--tokens", type=int, default=512, help="prompt length (default 512)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernels", default="auto",
                   help="kernel table: auto or a name from sdar_rt._core.cpu_kernels_available()")
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS),
                   help="matmul paths to time (default: both)")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if args.tokens < 1 or args.rounds < 1 or args.threads < 1:
        _log("--tokens, --rounds and --threads must be positive")
        return 2
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        results = [bench_artifact(a, args) for a in args.artifacts]
    except (ValueError, RuntimeError) as exc:
        _log(str(exc))
        return 2
    from .machine import _cpu_model

    out = {"started_utc": started, "cpu": _cpu_model(), "cpu_kernels": _core.cpu_kernels_available(),
           "rounds": args.rounds, "load_average_start": load,
           "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None, "results": results}
    for r in results:
        print(_table(r))
    print(f"load average (1, 5, 15 min): start {out['load_average_start']}, end {out['load_average_end']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0 if all(r["same_tokens"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
