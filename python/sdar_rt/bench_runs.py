"""sdar-bench measurement: timed calls of sdar_rt and of the baselines, summarised the same way.

Every system is timed per call with a wall clock around the call (what a caller waits for). sdar_rt
also reports, from its own stats, the time inside ``Engine.run`` (``engine_seconds``: ONNX Runtime
plus the Python engine's rebinding and the C++ -> Python crossing) and ONNX Runtime's own share
(``OrtEngine.timing()``), so the host overhead can be split honestly.
"""

from __future__ import annotations

import os
import statistics
import time

import psutil

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


class CpuClock:
    """Process CPU seconds (user + system, all threads) and the 1-minute load average over a timed
    section: tokens per CPU-second is far less sensitive than wall time to other processes sharing
    the cores (a busy shared host shows as a load average above the core count)."""

    def __enter__(self):
        t = psutil.Process().cpu_times()
        self.cpu0, self.load0 = t.user + t.system, os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return self

    def __exit__(self, *exc):
        t = psutil.Process().cpu_times()
        self.cpu = t.user + t.system - self.cpu0
        self.load = [self.load0, os.getloadavg()[0] if hasattr(os, "getloadavg") else None]
        return False

    def fields(self, tokens: int) -> dict:
        return {
            "cpu_seconds": self.cpu,
            "tokens_per_cpu_second": tokens / self.cpu if self.cpu else None,
            "load_average_1m": self.load,
        }


def summarize(calls: list[dict]) -> dict:
    """Aggregates per-call records: wall, tokens, rows, forwards, nfe, ttfb, blocks, engine/ort/core."""
    wall = sum(c["wall"] for c in calls)
    tokens = sum(c["tokens"] for c in calls)
    rows = sum(c["rows"] for c in calls)
    forwards = sum(c["forwards"] for c in calls)
    first = [c["ttfb"] for c in calls]
    blocks = [b for c in calls for b in c["blocks"]]
    out = {
        "calls": len(calls),
        "rows": rows,
        "tokens": tokens,
        "wall_seconds": wall,
        "tokens_per_second": tokens / wall if wall else 0.0,
        "tpf": (tokens / rows) / (forwards / len(calls)) if forwards and calls and rows else None,
        "nfe_per_call": {k: sum(c["nfe"].get(k, 0) for c in calls) / len(calls) for k in NFE_KEYS},
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
        "peak_rss_mib": max(c["rss"] for c in calls) if calls else None,
    }
    if all(c.get("engine") is not None for c in calls):
        engine = sum(c["engine"] for c in calls)
        core = sum(c["core"] for c in calls)
        prefill = sum(c["prefill_engine"] for c in calls)
        ort = sum(c["ort"] for c in calls) if all(c.get("ort") is not None for c in calls) else None
        out.update(
            engine_seconds=engine,
            host_seconds=wall - engine,
            host_fraction=(wall - engine) / wall if wall else 0.0,
            core_seconds=core,
            python_api_seconds=wall - core,  # tokenizer decode + Generator bookkeeping
            ort_seconds=ort,
            outside_ort_fraction=None if ort is None or not wall else (wall - ort) / wall,
            ms_per_decode_forward=1e3 * (engine - prefill) / forwards if forwards else None,
            prefill_seconds=prefill,
            # the generation rate without the prompt's prefill (llama-bench's "tg" next to "pp"):
            # prefill is one compute-bound pass, decode the weight-read-bound loop after it
            decode_tokens_per_second=tokens / (wall - prefill) if wall > prefill else None,
        )
    return out


def _engine_timing(gen) -> dict | None:
    timing = getattr(gen.engine, "timing", None)
    return timing() if callable(timing) else None


def time_sdar(
    gen,
    prompts: list[list[int]],
    *,
    runs: int,
    warmup: int,
    kwargs: dict,
    num_samples: int = 1,
    limits: list[int] | None = None,
) -> tuple[dict, list[list[list[int]]]]:
    """Runs ``runs`` passes over ``prompts`` (after ``warmup`` calls); returns (summary, outputs) where
    outputs[call][row] are the token ids. ``limits[i]``: max_new_tokens for prompt i (matched lengths)."""
    for i in range(warmup):
        gen.generate(prompt_ids=prompts[i % len(prompts)], num_samples=num_samples, **kwargs)
    calls, outputs = [], []
    with CpuClock() as clock:
        _sdar_calls(gen, prompts, runs, kwargs, num_samples, calls, outputs, limits)
    summary = summarize(calls)
    summary.update(clock.fields(summary["tokens"]))
    return summary, outputs


def _sdar_calls(gen, prompts, runs, kwargs, num_samples, calls, outputs, limits) -> None:
    for _ in range(runs):
        for i, prompt in enumerate(prompts):
            kw = kwargs if limits is None else {**kwargs, "max_new_tokens": limits[i]}
            before = _engine_timing(gen)
            t0 = time.perf_counter()
            out = gen.generate(prompt_ids=prompt, num_samples=num_samples, **kw)
            wall = time.perf_counter() - t0
            after = _engine_timing(gen)
            outs = out if isinstance(out, list) else [out]
            s = outs[0].stats  # one core call: num_samples <= the artifact's batch (checked by the caller)
            nfe = {k: s[f"nfe_{k}"] for k in NFE_KEYS}
            # ms per decode forward subtracts the prefill (core-measured prefill_seconds) from engine time
            calls.append(
                {
                    "wall": wall,
                    "core": s["total_seconds"],
                    "engine": s["engine_seconds"],
                    "ort": None if before is None else after["ort_seconds"] - before["ort_seconds"],
                    "prefill_engine": s.get("prefill_seconds", 0.0),
                    "tokens": s["tokens_generated"],
                    "rows": s["num_rows"],
                    "forwards": s["nfe_denoise"] + s["nfe_commit"] + s["nfe_fused"],
                    "nfe": nfe,
                    "ttfb": s["time_to_first_block"],
                    "blocks": list(s.get("block_seconds", [])),
                    "rss": rss_mib(),
                }
            )
            outputs.append([list(o.token_ids) for o in outs])


def time_baseline(generate, prompts: list[list[int]], *, runs: int, warmup: int) -> tuple[dict, list]:
    """Same for a baseline whose ``generate(prompt, index)`` returns the dict of bench_reference /
    bench_ortgenai (``index``: the prompt's index in ``prompts``)."""
    for i in range(warmup):
        generate(prompts[i % len(prompts)], i % len(prompts))
    calls, outputs = [], []
    with CpuClock() as clock:
        _baseline_calls(generate, prompts, runs, calls, outputs)
    summary = summarize(calls)
    summary.update(clock.fields(summary["tokens"]))
    return summary, outputs


def _baseline_calls(generate, prompts, runs, calls, outputs) -> None:
    for _ in range(runs):
        for i, prompt in enumerate(prompts):
            t0 = time.perf_counter()
            r = generate(prompt, i)
            wall = time.perf_counter() - t0
            nfe = r.get("nfe", {})
            forwards = r.get("forwards", nfe.get("denoise", 0) + nfe.get("commit", 0))
            calls.append(
                {
                    "wall": wall,
                    "tokens": r["tokens_generated"],
                    "rows": 1,
                    "forwards": forwards,
                    "nfe": nfe,
                    "ttfb": r["time_to_first_block"],
                    "blocks": r["block_seconds"],
                    "rss": rss_mib(),
                }
            )
            outputs.append([list(r["token_ids"])])
