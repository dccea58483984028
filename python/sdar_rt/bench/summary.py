"""The report's plain-text lines: what was measured (``summary``) and what to be careful of (``warnings``).

Every number here is one of the report's numbers rounded once, as shown in the tables; nothing is
judged against a goal, only compared with another measurement of the same run.
"""

from __future__ import annotations

from .spread import LARGE_SPREAD_PCT, is_large, large_spread_warning
from .sweep import config_label


def _f(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _ms(x: float | None) -> str:
    """A time in ms to four significant digits (173.7, 1.372, 0.1342): a sub-millisecond cost rounded
    to 0.1 ms would no longer agree with the ratio computed from it."""
    return "-" if x is None else format(x, ".4g")


def _runs(s: dict, what: str, spec: str) -> str:
    """``median of 3 runs; min 1.0, max 1.2``."""
    if s.get("relative_pct") is None:
        return f"one {what}"
    return f"median of {len(s['values'])} {what}s; min {_f(s['min'], spec)}, max {_f(s['max'], spec)}"


def comparison_line(c: dict) -> str:
    if "skipped" in c:
        return f"{c['title']}: skipped ({c['skipped']})"
    a, b = c["first"], c["second"]
    rate = "tokens_per_second"
    what = "tok/s"
    if c.get("rate") == "decode":  # llama-bench times decoding only: both sides after the prefill
        rate, what = "decode_tokens_per_second", "decode tok/s (after the prompt's prefill)"
    line = (
        f"{c['title']}: {_f(c['ratio'])}x {what} ({_runs(c['ratio_runs'], 'round', '.2f')}; "
        f"{_f(a[rate], '.1f')} vs {_f(b[rate], '.1f')} tok/s)"
    )
    if c.get("break_even_tpf") is not None and c.get("kind") == "ar-ort-genai":
        line += (
            f"; its cost per token {_f(c['break_even_tpf'])}x the peer's = "
            f"{_ms(a['wall_ms_per_decode_forward'])} ms per AR-mode token / "
            f"{_ms(b['ms_per_token_after_prefill'])} ms per {b['system']} token"
        )
    elif c.get("break_even_tpf") is not None:
        line += (
            f"; break-even TPF {_f(c['break_even_tpf'])} = {_ms(a['wall_ms_per_decode_forward'])} ms "
            f"per sdar_rt decode forward / {_ms(b['ms_per_token_after_prefill'])} ms per {b['system']} "
            f"token, at sdar_rt's measured TPF {_f(c['tpf'])}"
        )
    pp = c.get("prompt_processing")
    if pp and "skipped" in pp:
        line += f"; prompt processing skipped ({pp['skipped']})"
    elif pp:
        line += (
            f"; prompt processing ({pp['prompt_tokens']} tokens): {_f(pp['ratio'])}x "
            f"({_runs(pp['ratio_runs'], 'round', '.2f')}; "
            f"{_f(pp['sdar_rt_tokens_per_second']['median'], '.0f')} vs "
            f"{_f(pp['peer_tokens_per_second']['median'], '.0f')} prompt tok/s)"
        )
    if c.get("agreement"):
        g = c["agreement"]
        line += (
            f"; its tokens equal the float ones at {100 * g['token_agreement']:.1f}% of positions, "
            f"{g['rows_equal']}/{g['rows']} rows identical; TPF {_f(a.get('tpf'))} vs {_f(b.get('tpf'))}"
        )
    return line


def summary_lines(report: dict, primary: dict) -> list[str]:
    checks = report["equality"]["checks"]
    kinds = ["fused/separate commit"]
    if any(c["check"].startswith("batch") for c in checks):
        kinds.append("batch rows")
    if any(c["check"].startswith("reference") for c in checks):
        kinds.append("PyTorch reference")
    p = primary["row"]
    lines = [
        f"equality: {len(checks)} check{'s' if len(checks) != 1 else ''} passed ({', '.join(kinds)})",
        f"sdar_rt {config_label(primary['config'])} {primary['config']['remasking']}: "
        f"{p['tokens_per_second']:.1f} tok/s ({_runs(p['tokens_per_second_runs'], 'run', '.1f')}), "
        f"TPF {_f(p['tpf'])}, "
        f"host {100 * p['host_fraction']:.1f}% of wall "
        f"({100 * (p['outside_ort_fraction'] or 0):.1f}% outside ONNX Runtime)",
    ]
    lines += [comparison_line(c) for c in report["comparisons"]]
    by_plen = [
        r
        for r in report["results"]
        if r["config"]["commit"] == "fused"
        and r["config"]["batch"] == 1
        and all(r["config"][k] == primary["config"][k] for k in ("block_length", "threshold", "steps"))
    ]
    if len({r["config"]["prompt_length"] for r in by_plen}) > 1:
        parts = ", ".join(
            f"{r['config']['prompt_length']} tok: {r['ms_per_decode_forward']:.2f} ms/forward"
            for r in by_plen
        )
        lines.append(f"cost vs actual context (max context {primary['artifact'].max_context}): {parts}")
    return lines


def warnings(report: dict) -> list[str]:
    out = []
    if report["settings"]["runs"] == 1:
        out.append("one run per measurement: no spread is measured (--runs 3 or more shows it)")
    noisy = [r for r in report["results"] if is_large(r["tokens_per_second_runs"])]
    if noisy:
        worst = max(noisy, key=lambda r: r["tokens_per_second_runs"]["relative_pct"])
        w = large_spread_warning(
            f"sdar_rt {config_label(worst['config'])} tok/s", worst["tokens_per_second_runs"], ".1f"
        )
        more = (
            f" (and {len(noisy) - 1} more of {len(report['results'])} rows by over {LARGE_SPREAD_PCT}%)"
            if len(noisy) > 1
            else ""
        )
        out.append(w + more)
    for c in report["comparisons"]:
        if "ratio_runs" in c:
            w = large_spread_warning(f"{c['title']}: the ratio", c["ratio_runs"])
            if w:
                out.append(w)
    cpus = report["machine"].get("cpu_affinity") or report["machine"].get("logical_cpus")
    loads = [x for r in report["results"] for x in (r.get("load_average_1m") or []) if x is not None]
    if cpus and loads and max(loads) > cpus:
        out.append(
            f"the 1-minute load average reached {max(loads):.1f} on {cpus} CPUs during the runs: other "
            "work shared the cores, so absolute rates are low and vary; ratios within a round are "
            "the numbers to read"
        )
    return out
