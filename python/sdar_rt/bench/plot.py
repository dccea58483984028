"""The benchmark as a PNG: tokens/s and block latency against the setting that was swept (ticks at
the values measured), and a bar chart of every system measured with whiskers from its slowest to its
fastest run. One configuration gives just the bars: sdar_rt's fused and separate commit, and each
comparison's two sides next to each other with their ratio (median round) above. Needs matplotlib
(the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path

INSTALL = 'pip install "sdar_rt[bench]"'
SWEEP_KEYS = ("block_length", "threshold", "steps", "prompt_length", "batch")
COLORS = {"sdar_rt": "tab:blue", "ar": "tab:gray", "reference": "tab:orange", "ort-genai": "tab:green"}


def missing_reason() -> str | None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return f"matplotlib is not installed ({INSTALL} installs it)"
    return None


def measured_ticks(values) -> list[float]:
    """The axis ticks: exactly the values measured, in order (never a value between two of them)."""
    return sorted({v for v in values if v is not None})


def tick_label(value: float) -> str:
    return format(value, "g")


def sweep_axis(report: dict) -> str | None:
    """The swept setting to plot along: the first one with several measured values."""
    rows = [r["config"] for r in report["results"] if r["config"]["commit"] == "fused"]
    for key in SWEEP_KEYS:
        if len({c[key] for c in rows}) > 1:
            return key
    return None


def _yerr(rows: list[dict]) -> list[list[float]]:
    """Whiskers from each row's value down to its slowest run and up to its fastest (zero for one run)."""
    lo, hi = [], []
    for r in rows:
        s, v = r["tokens_per_second_runs"], r["tokens_per_second"]
        lo.append(max(0.0, v - s["min"]) if s["min"] is not None else 0.0)
        hi.append(max(0.0, s["max"] - v) if s["max"] is not None else 0.0)
    return [lo, hi]


def _bar_label(row: dict, extra: str = "") -> str:
    """``system`` over its weights, one item per line (``int4 g128`` / ``LM head int8``)."""
    parts = [row.get("system", "?"), *(row.get("weights") or "").split(", "), extra]
    return "\n".join(p for p in parts if p)


def _groups(report: dict, with_sweep: bool) -> list[tuple[list[dict], list[str], str | None]]:
    """Bars in groups: (rows, labels, ratio mark). The sweep's first configuration fused and separate,
    then each comparison's two sides, measured in the same rounds."""
    groups = []
    if with_sweep:
        rows = report["results"][:2]
        groups.append((rows, [_bar_label(r, f"{r['config']['commit']} commit") for r in rows], None))
    for c in report["comparisons"]:
        if "skipped" not in c:
            rows = [c["first"], c["second"]]
            extra = ""
            if c.get("rate") == "decode":  # the rates the ratio is of: after the prompt's prefill
                none = {"min": None, "max": None}
                rows = [{**r, "tokens_per_second": r["decode_tokens_per_second"],
                         "tokens_per_second_runs": none} for r in rows]
                extra = "decode only"
            mark = None if c["ratio"] is None else f"{c['ratio']:.2f}x"
            groups.append((rows, [_bar_label(r, extra) for r in rows], mark))
    return groups


def _bar_panel(ax, report: dict, with_sweep: bool) -> None:
    xs, rows, labels, x = [], [], [], 0.0
    for g_rows, g_labels, mark in _groups(report, with_sweep):
        g_xs = [x + i for i in range(len(g_rows))]
        xs += g_xs
        rows += g_rows
        labels += g_labels
        if mark:
            top = max(r["tokens_per_second_runs"]["max"] or r["tokens_per_second"] for r in g_rows)
            ax.annotate(mark, (sum(g_xs) / len(g_xs), top), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 4), textcoords="offset points")
        x = g_xs[-1] + 1.6  # a gap between groups: each group was measured on its own
    ax.bar(xs, [r["tokens_per_second"] for r in rows], yerr=_yerr(rows), capsize=3,
           color=[COLORS.get(r.get("system"), "tab:purple") for r in rows])
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("generated tokens/s (whiskers: slowest, fastest run)")
    ax.margins(y=0.12)


def _sweep_panels(a1, a2, report: dict, key: str) -> None:
    rows = [r for r in report["results"] if r["config"]["commit"] == "fused"]
    series: dict[str, list[dict]] = {}
    for r in rows:
        rest = {k: v for k, v in r["config"].items() if k not in (key, "commit", "remasking")}
        label = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in rest.items() if v is not None)
        series.setdefault(label, []).append(r)
    for label, pts in series.items():
        pts.sort(key=lambda r: r["config"][key])
        xs = [r["config"][key] for r in pts]
        a1.errorbar(
            xs, [r["tokens_per_second"] for r in pts], yerr=_yerr(pts), marker="o", capsize=3, label=label
        )
        a2.plot(xs, [r["block_latency_ms"]["median"] or 0 for r in pts], marker="o", label=label)
    ticks = measured_ticks(r["config"][key] for r in rows)
    for ax in (a1, a2):
        ax.set_xticks(ticks)
        ax.set_xticklabels([tick_label(t) for t in ticks])
        ax.set_xlabel(key.replace("_", " "))
    a1.set_ylabel("generated tokens/s (whiskers: slowest, fastest run)")
    a2.set_ylabel("block latency, median (ms)")
    a1.legend(fontsize=7)


def figure(report: dict):
    """The matplotlib Figure of ``report`` (headless backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = sweep_axis(report)
    has_bars = any("skipped" not in c for c in report["comparisons"])
    if key is None:
        n_bars = 2 + 2 * sum("skipped" not in c for c in report["comparisons"])
        fig, ax = plt.subplots(1, 1, figsize=(max(5.0, 1.3 * n_bars), 4.5))
        _bar_panel(ax, report, with_sweep=True)
    else:
        fig, axes = plt.subplots(1, 3 if has_bars else 2, figsize=(15 if has_bars else 10, 4.5))
        _sweep_panels(axes[0], axes[1], report, key)
        if has_bars:
            _bar_panel(axes[2], report, with_sweep=False)
    fig.suptitle(f"sdar-bench: {report['target']['name']}", fontsize=10)
    fig.tight_layout()
    return fig


def write(report: dict, path: Path) -> str | None:
    """Writes the PNG; returns why not (one line) when it cannot."""
    reason = missing_reason()
    if reason:
        return reason
    import matplotlib.pyplot as plt

    fig = figure(report)
    try:
        fig.savefig(path, dpi=100, format="png")
    finally:
        plt.close(fig)
    return None
