"""The report as tables on stderr: every configuration measured, then the comparisons, then the
summary lines and warnings."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .spread import show
from .sweep import config_label


def _fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def _ms(x):
    return _fmt(x, ".4g")  # four significant digits, so that sub-ms costs still divide to the ratio shown


def results_table(report: dict) -> Table:
    t = Table(title=f"sdar-bench: {report['target']['name']}")
    for col in (
        "system",
        "config",
        "tok/s, median run (min-max)",
        "TPF",
        "NFE/call",
        "first block ms",
        "block ms p50/p90/p99",
        "host %",
        "tok/CPU-s",
        "RSS MiB",
    ):
        t.add_column(col, justify="right")
    for r in report["results"]:
        blk = r["block_latency_ms"]
        blocks = "-" if blk["median"] is None else f"{blk['median']:.1f}/{blk['p90']:.1f}/{blk['p99']:.1f}"
        t.add_row(
            r["system"],
            config_label(r.get("config", {})),
            show(r["tokens_per_second"], r["tokens_per_second_runs"]),
            _fmt(r.get("tpf"), ".2f"),
            f"{sum(r['nfe_per_call'].values()):.1f}",
            _fmt(r["time_to_first_block_ms"]["median"]),
            blocks,
            _fmt(r.get("host_fraction") and 100 * r["host_fraction"]),
            _fmt(r.get("tokens_per_cpu_second")),
            _fmt(r.get("peak_rss_mib"), ".0f"),
        )
    return t


def comparisons_table(comparisons: list[dict]) -> Table:
    t = Table(
        title="comparisons in alternating rounds: ratio = sdar_rt tok/s / peer tok/s within a round, "
        "median round (lowest-highest); decode* = after the prompt's prefill on both sides"
    )
    cols = (
        "comparison",
        "weights",
        "sdar_rt tok/s",
        "peer tok/s",
        "ratio",
        "TPF",
        "sdar_rt ms per decode forward",
        "peer ms per token",
        "break-even TPF",
        "prompt tok/s sdar_rt / peer (ratio)",
    )
    for col in cols:
        t.add_column(col, justify="right")
    for c in comparisons:
        if "skipped" in c:
            t.add_row(c["title"], "skipped", *["-"] * (len(cols) - 2))
            continue
        a, b = c["first"], c["second"]
        ar_peer = c.get("break_even_tpf") is not None
        decode = c.get("rate") == "decode"
        t.add_row(
            c["title"],
            a.get("weights", "-"),
            _fmt(a.get("decode_tokens_per_second")) + "*" if decode
            else show(a["tokens_per_second"], a["tokens_per_second_runs"]),
            _fmt(b.get("decode_tokens_per_second")) + "*" if decode
            else show(b["tokens_per_second"], b["tokens_per_second_runs"]),
            show(c["ratio"], c["ratio_runs"], ".2f"),
            _fmt(c.get("tpf"), ".2f"),
            _ms(a.get("wall_ms_per_decode_forward")) if ar_peer else "-",
            _ms(b.get("ms_per_token_after_prefill")) if ar_peer else "-",
            _fmt(c.get("break_even_tpf"), ".2f"),
            _prompt_rates(c.get("prompt_processing")),
        )
    return t


def _prompt_rates(pp: dict | None) -> str:
    if not pp:
        return "-"
    if "skipped" in pp:
        return "skipped"
    return (
        f"{_fmt(pp['sdar_rt_tokens_per_second']['median'], '.0f')} / "
        f"{_fmt(pp['peer_tokens_per_second']['median'], '.0f')} ({pp['ratio']:.2f}, pp{pp['prompt_tokens']})"
    )


def print_report(report: dict, console: Console | None = None) -> None:
    console = console or Console(stderr=True, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 160)
    console.print(results_table(report))
    if report["comparisons"]:
        console.print(comparisons_table(report["comparisons"]))
    for line in report["summary"]:
        console.print(Text(line))
    for line in report["warnings"]:
        console.print(Text("warning: " + line, style="yellow"))
