"""Timed calls of sdar_rt and of the baselines, summarised the same way for both.

Every call is timed with a wall clock around it (what a caller waits for). A pass is one run over
the prompt set; a measurement is several passes. Its ``tokens_per_second`` is the median pass's
(generated tokens / wall time of the pass), with the slowest and fastest pass beside it
(``tokens_per_second_runs``); latencies, NFE, TPF, costs per forward and the engine/host split are
over all the passes' calls together. sdar_rt also reports, from its own stats, the time inside ``Engine.run``
(``engine_seconds``: ONNX Runtime plus the Python engine's rebinding and the C++ -> Python crossing)
and ONNX Runtime's own share (``OrtEngine.timing()``), so the host overhead can be split honestly.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from .spread import spread

NFE_KEYS = ("prefill", "denoise", "commit", "fused")


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in [0, 100]); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


def _ms(x: float | None) -> float | None:
    return None if x is None else x * 1e3


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _load() -> float | None:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _cpu() -> float:
    t = psutil.Process().cpu_times()
    return t.user + t.system


@dataclass
class Pass:
    """One timed run over the prompt set: per-call records, the token ids (outputs[call][row]), the
    process's CPU seconds (all threads: far less sensitive than wall time to other processes sharing
    the cores) and the 1-minute load average before and after (above the core count = a busy host)."""

    calls: list[dict] = field(default_factory=list)
    outputs: list[list[list[int]]] = field(default_factory=list)
    cpu_seconds: float = 0.0
    load: tuple[float | None, float | None] = (None, None)

    @property
    def tokens(self) -> int:
        return sum(c["tokens"] for c in self.calls)

    @property
    def wall(self) -> float:
        return sum(c["wall"] for c in self.calls)


def _timed_pass(call_one: Callable[[int], tuple[dict, list[list[int]]]], n: int, on_call) -> Pass:
    p = Pass()
    cpu0, load0 = _cpu(), _load()
    for i in range(n):
        record, rows = call_one(i)
        p.calls.append(record)
        p.outputs.append(rows)
        if on_call is not None:
            on_call()
    p.cpu_seconds, p.load = _cpu() - cpu0, (load0, _load())
    return p


def _engine_timing(gen) -> dict | None:
    timing = getattr(gen.engine, "timing", None)
    return timing() if callable(timing) else None


def sdar_pass(
    gen,
    prompts: list[list[int]],
    kwargs: dict,
    *,
    num_samples: int = 1,
    limits: list[int] | None = None,
    on_call=None,
) -> Pass:
    """One pass of ``gen.generate`` over ``prompts``; ``limits[i]``: max_new_tokens for prompt i."""

    def call_one(i: int):
        kw = kwargs if limits is None else {**kwargs, "max_new_tokens": limits[i]}
        before = _engine_timing(gen)
        t0 = time.perf_counter()
        out = gen.generate(prompt_ids=prompts[i], num_samples=num_samples, **kw)
        wall = time.perf_counter() - t0
        after = _engine_timing(gen)
        outs = out if isinstance(out, list) else [out]
        s = outs[0].stats  # one core call: num_samples <= the artifact's batch (checked by the caller)
        record = {
            "wall": wall,
            "core": s["total_seconds"],
            "engine": s["engine_seconds"],
            "ort": None if before is None else after["ort_seconds"] - before["ort_seconds"],
            "prefill_engine": s.get("prefill_seconds", 0.0),
            "tokens": s["tokens_generated"],
            "rows": s["num_rows"],
            "forwards": s["nfe_denoise"] + s["nfe_commit"] + s["nfe_fused"],
            "nfe": {k: s[f"nfe_{k}"] for k in NFE_KEYS},
            "ttfb": s["time_to_first_block"],
            "blocks": list(s.get("block_seconds", [])),
            "rss": rss_mib(),
        }
        return record, [list(o.token_ids) for o in outs]

    return _timed_pass(call_one, len(prompts), on_call)


def baseline_pass(generate: Callable[[int], dict], n: int, *, on_call=None) -> Pass:
    """One pass of a baseline whose ``generate(i)`` runs prompt i and returns the dict of
    ``reference`` / ``ortgenai`` (token_ids, tokens_generated, time_to_first_block, block_seconds,
    and nfe or forwards; AR baselines also decode_seconds / decode_tokens after the first token)."""

    def call_one(i: int):
        t0 = time.perf_counter()
        r = generate(i)
        wall = time.perf_counter() - t0
        nfe = r.get("nfe", {})
        record = {
            "wall": wall,
            "tokens": r["tokens_generated"],
            "rows": 1,
            "forwards": r.get("forwards", nfe.get("denoise", 0) + nfe.get("commit", 0)),
            "nfe": nfe,
            "ttfb": r["time_to_first_block"],
            "blocks": r["block_seconds"],
            "decode_seconds": r.get("decode_seconds"),
            "decode_tokens": r.get("decode_tokens"),
            "rss": rss_mib(),
        }
        return record, [list(r["token_ids"])]

    return _timed_pass(call_one, n, on_call)


def summarize(passes: list[Pass]) -> dict:
    """All passes' calls together (rates, latencies, NFE, engine/host split) and the per-pass rates."""
    calls = [c for p in passes for c in p.calls]
    wall = sum(c["wall"] for c in calls)
    tokens = sum(c["tokens"] for c in calls)
    rows = sum(c["rows"] for c in calls)
    forwards = sum(c["forwards"] for c in calls)
    cpu = sum(p.cpu_seconds for p in passes)
    first = [c["ttfb"] for c in calls]
    blocks = [b for c in calls for b in c["blocks"]]
    per_run = [
        {
            "tokens": p.tokens,
            "wall_seconds": p.wall,
            "cpu_seconds": p.cpu_seconds,
            "tokens_per_second": p.tokens / p.wall if p.wall else 0.0,
        }
        for p in passes
    ]
    rates = spread([r["tokens_per_second"] for r in per_run])
    out = {
        "runs": len(passes),
        "calls": len(calls),
        "rows": rows,
        "tokens": tokens,
        "wall_seconds": wall,
        "tokens_per_second": rates["median"] if per_run else 0.0,
        "tokens_per_second_runs": rates,
        "per_run": per_run,
        "tpf": (tokens / rows) / (forwards / len(calls)) if forwards and calls and rows else None,
        "nfe_per_call": {k: sum(c["nfe"].get(k, 0) for c in calls) / len(calls) for k in NFE_KEYS}
        if calls
        else {},
        "decode_forwards_per_call": forwards / len(calls) if calls else 0.0,
        "time_to_first_block_ms": {
            "median": _ms(statistics.median(first)) if first else None,
            "p90": _ms(percentile(first, 90)),
        },
        "block_latency_ms": {
            "median": _ms(statistics.median(blocks)) if blocks else None,
            "p90": _ms(percentile(blocks, 90)),
            "p99": _ms(percentile(blocks, 99)),
            "count": len(blocks),
        },
        # None for a peer in another process (llama-bench), whose memory this process cannot see
        "peak_rss_mib": max((c["rss"] for c in calls if c.get("rss") is not None), default=None),
        "cpu_seconds": cpu,
        "tokens_per_cpu_second": tokens / cpu if cpu else None,
        "load_average_1m": [passes[0].load[0], passes[-1].load[1]] if passes else None,
    }
    if calls and all(c.get("engine") is not None for c in calls):
        out.update(_engine_split(calls, wall, tokens, forwards))
    decode_n = sum(c.get("decode_tokens") or 0 for c in calls)
    if decode_n and all(c.get("decode_seconds") is not None for c in calls):
        decode_s = sum(c["decode_seconds"] for c in calls)
        # an AR baseline's cost per token after its first (the first one carries the prompt's prefill)
        out["ms_per_token_after_prefill"] = 1e3 * decode_s / decode_n
        out["decode_tokens_per_second"] = decode_n / decode_s if decode_s else None
    return out


def _engine_split(calls: list[dict], wall: float, tokens: int, forwards: int) -> dict:
    engine = sum(c["engine"] for c in calls)
    core = sum(c["core"] for c in calls)
    prefill = sum(c["prefill_engine"] for c in calls)
    ort = sum(c["ort"] for c in calls) if all(c.get("ort") is not None for c in calls) else None
    return {
        "engine_seconds": engine,
        "host_seconds": wall - engine,
        "host_fraction": (wall - engine) / wall if wall else 0.0,
        "core_seconds": core,
        "python_api_seconds": wall - core,  # tokenizer decode + Generator bookkeeping
        "ort_seconds": ort,
        "outside_ort_fraction": None if ort is None or not wall else (wall - ort) / wall,
        "ms_per_decode_forward": 1e3 * (engine - prefill) / forwards if forwards else None,
        # the same with the host's share: wall time after the prefill per decode forward, so that
        # decode tokens/s = TPF x 1000 / this (what a break-even TPF against an AR peer needs)
        "wall_ms_per_decode_forward": 1e3 * (wall - prefill) / forwards if forwards else None,
        "ms_per_token_after_prefill": 1e3 * (wall - prefill) / tokens if tokens else None,
        "prefill_seconds": prefill,
        # the generation rate without the prompt's prefill (llama-bench's "tg" next to "pp"):
        # prefill is one compute-bound pass, decode the weight-read-bound loop after it
        "decode_tokens_per_second": tokens / (wall - prefill) if wall > prefill else None,
    }


def time_sdar(
    gen, prompts: list[list[int]], *, runs: int, warmup: int, kwargs: dict, num_samples: int = 1, on_call=None
) -> tuple[dict, list[list[list[int]]]]:
    """``warmup`` untimed calls, then ``runs`` passes; returns (summary, every call's token ids:
    outputs[call][row], the passes one after the other)."""
    for i in range(warmup):
        gen.generate(prompt_ids=prompts[i % len(prompts)], num_samples=num_samples, **kwargs)
        if on_call is not None:
            on_call()
    passes = [sdar_pass(gen, prompts, kwargs, num_samples=num_samples, on_call=on_call) for _ in range(runs)]
    return summarize(passes), [o for p in passes for o in p.outputs]
