"""sdar-bench ``--int4``: the same checkpoint with float and with int4 weights, on the same prompts.

The quantized artifact (``sdar-export --int4``, cached like the float one) runs the primary
configuration (first block length, batch 1, fused commit) right after the float sweep, so both
rates come from the same stretch of this machine's load. Reported per weight format: tokens/s,
tokens per CPU-second, tokens/s after the prompt's prefill, ms per decode forward, TPF; for the
quantized one also the ratios to float, greedy-token agreement with the float tokens (equal tokens
position by position, and equal rows) and the TPF change. The tokens are not required to be
equal: agreement is a measurement here.
"""

from __future__ import annotations

import gc
import sys

from .bench_artifacts import LowBit
from .bench_runs import time_sdar

# The low-bit issue's target: int4 decodes at least this many times faster than the float weights.
TARGET_INT4_SPEEDUP = 2.0
_ROW_KEYS = ("tokens_per_second", "decode_tokens_per_second", "tokens_per_cpu_second",
             "ms_per_decode_forward", "prefill_seconds", "tpf", "tokens", "calls", "wall_seconds",
             "peak_rss_mib")


def _log(msg: str) -> None:
    print(f"sdar-bench: {msg}", file=sys.stderr, flush=True)


def token_agreement(ours: list[list[list[int]]], theirs: list[list[list[int]]]) -> dict:
    """Agreement of two output sets (outputs[call][row] = token ids): the fraction of positions with the
    same token (over the longer row of each pair, so a length difference counts as disagreement) and
    the fraction of rows that are identical."""
    pairs = [(a, b) for ca, cb in zip(ours, theirs, strict=True) for a, b in zip(ca, cb, strict=True)]
    same = sum(sum(x == y for x, y in zip(a, b, strict=False)) for a, b in pairs)
    total = sum(max(len(a), len(b)) for a, b in pairs)
    return {
        "tokens_equal": same,
        "tokens_compared": total,
        "token_agreement": same / total if total else 1.0,
        "rows_equal": sum(a == b for a, b in pairs),
        "rows": len(pairs),
        "row_agreement": sum(a == b for a, b in pairs) / len(pairs) if pairs else 1.0,
    }


def _ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x and y else None


def _row(weights: str, artifact, row: dict) -> dict:
    q = artifact.quantization or {}
    return {
        "weights": weights,
        "lm_head": q.get("lm_head", artifact.dtype),
        "group_size": q.get("group_size"),
        "artifact": str(artifact.path),
        **{k: row.get(k) for k in _ROW_KEYS},
    }


def compare(a, targets, primary: dict, lowbit: LowBit) -> dict:
    """Runs the quantized export on the primary configuration and compares it with the float run."""
    from .generator import Generator

    cfg = primary["config"]
    gen = Generator(targets.artifact(cfg["block_length"], 1, lowbit), engine=a.engine, device=a.device,
                    threads=a.threads)
    prompts = primary["prompts"]
    _log(f"{lowbit.tag} weights: {a.runs} x {len(prompts)} calls, fused commit")
    row, outs = time_sdar(gen, prompts, runs=a.runs, warmup=a.warmup,
                          kwargs={**primary["kwargs"], "fused_commit": True})
    low = _row(lowbit.weights, gen.artifact, row)
    del gen
    gc.collect()
    ref = primary["row"]
    low.update(
        speedup=_ratio(row["tokens_per_second"], ref["tokens_per_second"]),
        decode_speedup=_ratio(row.get("decode_tokens_per_second"), ref.get("decode_tokens_per_second")),
        speedup_cpu=_ratio(row.get("tokens_per_cpu_second"), ref.get("tokens_per_cpu_second")),
        forward_speedup=_ratio(ref.get("ms_per_decode_forward"), row.get("ms_per_decode_forward")),
        tpf_change=row["tpf"] - ref["tpf"] if row.get("tpf") is not None and ref.get("tpf") else None,
        **token_agreement(outs, primary["outputs"]),
    )
    return {
        "config": {**cfg, "commit": "fused"},
        "target_speedup": TARGET_INT4_SPEEDUP,
        "met": (low["speedup"] or 0.0) >= TARGET_INT4_SPEEDUP,
        "rows": [_row(primary["artifact"].dtype, primary["artifact"], ref), low],
    }


def summary_line(w: dict) -> str:
    f, q = w["rows"]
    return (
        f"{q['weights']} (LM head {q['lm_head']}, group {q['group_size']}) vs {f['weights']}: "
        f"{q['speedup']:.2f}x tok/s ({_fmt(q['speedup_cpu'])}x per CPU-second, "
        f"{_fmt(q.get('decode_speedup'))}x after the prefill, "
        f"{_fmt(q['forward_speedup'])}x per decode forward; target {w['target_speedup']:g}x "
        f"{'met' if w['met'] else 'NOT met'}), tokens equal {100 * q['token_agreement']:.1f}%, "
        f"rows equal {q['rows_equal']}/{q['rows']}, TPF {q['tpf']:.2f} vs {f['tpf']:.2f}"
    )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def print_table(console, w: dict) -> None:
    from rich.table import Table

    t = Table(title=f"weights (same checkpoint, prompts and configuration; target int4 >= "
                    f"{w['target_speedup']:g}x float tok/s)")
    for col in ("weights", "LM head", "tok/s", "x float", "x per CPU-s", "x after prefill", "ms/forward",
                "x per forward", "TPF", "TPF change", "tokens equal", "rows equal"):
        t.add_column(col, justify="right")
    for r in w["rows"]:
        low = "speedup" in r
        t.add_row(
            r["weights"] + (f" g{r['group_size']}" if r["group_size"] else ""),
            str(r["lm_head"]),
            f"{r['tokens_per_second']:.1f}",
            _fmt(r.get("speedup")) if low else "1.00",
            _fmt(r.get("speedup_cpu")) if low else "1.00",
            _fmt(r.get("decode_speedup")) if low else "1.00",
            _fmt(r.get("ms_per_decode_forward")),
            _fmt(r.get("forward_speedup")) if low else "1.00",
            _fmt(r.get("tpf")),
            f"{r['tpf_change']:+.2f}" if low and r.get("tpf_change") is not None else "-",
            f"{100 * r['token_agreement']:.1f}%" if low else "-",
            f"{r['rows_equal']}/{r['rows']}" if low else "-",
        )
    console.print(t)
