"""Prompt processing (prefill) speed of the native CPU engine: its large-M paths against the small-M kernels.

    python -m sdar_rt.bench.prefill ART [ART ...] [--tokens 512] [--threads 2] [--rounds 7]
                                    [--kernels auto] [--paths gemm small-m no-amx] [--json OUT]

For each artifact (exported with the CPU engine's weights), one Generator per matmul path in the
same process, on the same mapped weights:
  * ``gemm``: the default: float32 matmuls of many rows run as a blocked GEMM, and int4 / int8 ones
    on AMX tiles where the CPU has AMX-INT8 (``sdar_rt._core.cpu_amx_usable()``, avx512vnni kernels),
    else with the VNNI tables' blocked strips kernel;
  * ``small-m``: every matmul runs the small-M kernels of decoding (``SDAR_CPU_GEMM_MIN_ROWS=0``,
    ``SDAR_CPU_AMX=0``), the path before any of them existed;
  * ``no-amx``: the default without AMX (``SDAR_CPU_AMX=0``): for int4 / int8 weights, the AMX path
    against the strips kernel (the small-M kernels on a table without one).
Each round prefills the same prompt of ``--tokens`` random token ids once per path, alternately (the
order reversed every other round), so both paths see the same load on a shared host; a call
generates one block after the prompt, and the prompt's tokens per second are the prompt length over
the call's ``prefill_seconds`` (the prefill's chunks of ``prefill_chunk`` tokens, as in any call).
Reported per path: the median round, the slowest and fastest, every round; the ratio of the paths per
round; the engine's own split of a call's time by phase (``profile()``: each matmul by weight,
attention, the rest; the block after the prompt included), the median over the rounds; whether the
engine took AMX; whether every path generated the same tokens (they must: the GEMM, the AMX path and
the strips kernel give the same bits as the small-M kernels).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np

from .. import _core
from .spread import spread

ENV = "SDAR_CPU_GEMM_MIN_ROWS"
AMX_ENV = "SDAR_CPU_AMX"
# The settings of each path (a variable left out: unset, the default).
PATHS = {"gemm": {}, "small-m": {ENV: "0", AMX_ENV: "0"}, "no-amx": {AMX_ENV: "0"}}
DEFAULT_PATHS = ["gemm", "small-m"]
SETTLE_SECONDS = 0.05  # idle before each call: the other engine's workers stop spinning


def _log(msg: str) -> None:
    print(f"sdar_rt.bench.prefill: {msg}", file=sys.stderr, flush=True)


def _generator(path: str, threads: int, kernels: str, settings: dict[str, str]):
    """A Generator whose CPU engine reads ``settings`` from the environment when it is built."""
    from ..artifact import load_artifact
    from ..cpu_engine import make_cpu_engine
    from ..generator import Generator

    saved = {name: os.environ.get(name) for name in (ENV, AMX_ENV)}
    try:
        for name in saved:
            if name in settings:
                os.environ[name] = settings[name]
            else:
                os.environ.pop(name, None)
        engine = make_cpu_engine(load_artifact(path), threads=threads, kernels=kernels)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
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
    phases: dict[str, list[dict[str, float]]] = {name: [] for name in gens}
    for r in range(args.rounds):
        order = list(gens.items()) if r % 2 == 0 else list(gens.items())[::-1]  # neither path always first
        for name, g in order:
            time.sleep(SETTLE_SECONDS)
            before = g.engine.profile()
            out = g.generate(prompt_ids=prompt, max_new_tokens=L)
            after = g.engine.profile()
            rates[name].append(args.tokens / out.stats["prefill_seconds"])
            phases[name].append({k: after[k] - before[k] for k in after if k != "runs"})
            if out.token_ids != outputs[name]:
                raise RuntimeError(f"{path}: the {name} path generated different tokens in round {r + 1}")
        _log(f"{path}: round {r + 1}/{args.rounds}: " +
             ", ".join(f"{n} {v[-1]:.1f} prompt tokens/s" for n, v in rates.items()))
    q = a.quantization or {}
    res = {"artifact": os.path.basename(os.path.normpath(path)), "weights": q.get("weights", a.dtype),
           "kernels": first.engine.kernels, "threads": first.engine.threads, "prompt_tokens": args.tokens,
           "amx": {n: g.engine.amx for n, g in gens.items()},
           "prefill_chunk": getattr(first.spec, "prefill_chunk", None),
           "prompt_tokens_per_second": {n: spread(v) for n, v in rates.items()},
           "phase_seconds": {n: {k: statistics.median(p[k] for p in calls) for k in calls[0]}
                             for n, calls in phases.items()},
           "same_tokens": len({tuple(t) for t in outputs.values()}) == 1}
    for other in ("small-m", "no-amx"):
        if "gemm" in rates and other in rates:
            pairs = zip(rates["gemm"], rates[other], strict=True)
            res[f"gemm_over_{other.replace('-', '_')}"] = spread([g / s for g, s in pairs])
    return res


def _table(res: dict) -> str:
    lines = [f"{res['artifact']}: {res['weights']} weights, kernels {res['kernels']}, "
             f"{res['threads']} threads, {res['prompt_tokens']}-token prompt",
             "  path      prompt tokens/s (median [min, max] of the rounds)"]
    for name, s in res["prompt_tokens_per_second"].items():
        amx = ", AMX" if res["amx"][name] else ""
        lines.append(f"  {name:8s}  {s['median']:8.1f} [{s['min']:.1f}, {s['max']:.1f}]  "
                     f"rounds: {', '.join(f'{v:.1f}' for v in s['values'])}{amx}")
    for other in ("small-m", "no-amx"):
        key = f"gemm_over_{other.replace('-', '_')}"
        if key in res:
            s = res[key]
            lines.append(f"  gemm / {other} per round: {s['median']:.2f}x [{s['min']:.2f}, {s['max']:.2f}]  "
                         f"rounds: {', '.join(f'{v:.2f}' for v in s['values'])}")
    for name, p in res["phase_seconds"].items():
        lines.append(f"  {name:8s}  engine seconds per call (median): " +
                     ", ".join(f"{k} {v:.3f}" for k, v in p.items()))
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
    p.add_argument("--paths", nargs="+", default=DEFAULT_PATHS, choices=list(PATHS),
                   help="matmul paths to time (default: gemm small-m)")
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
           "cpu_amx_usable": _core.cpu_amx_usable(),
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
