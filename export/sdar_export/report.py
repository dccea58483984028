"""What an export reports when it ends: the summary on stderr (files, worst validation error per
graph, total time and peak memory) and, with ``--report FILE``, the same as JSON with every stage's
time and memory. No torch import here."""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

from .stages import console


def report_dict(result) -> dict:
    """The export report: stages (seconds, RSS before / peak / after, in bytes), files, sizes."""
    from . import EXPORTER_VERSION  # noqa: PLC0415

    stages = [{"stage": r.name, "seconds": round(r.seconds, 3), "rss_before": r.rss_before,
               "peak_rss": r.peak_rss, "rss_after": r.rss_after} for r in result.stages]
    onnx_bytes = sum(n for f, n in result.files.items() if f.endswith((".onnx", ".onnx.data")))
    return {
        "artifact": str(result.path),
        "exporter_version": EXPORTER_VERSION,
        "stages": stages,
        "peak_rss": result.peak_rss,
        "checkpoint_bytes": result.checkpoint_bytes,
        "weights_bytes": result.weights_bytes,
        "artifact_bytes": sum(result.files.values()),
        "graphs_and_weights_bytes": onnx_bytes,
        "files": result.files,
        "validation": result.validation,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }


def write_report(path: Path, result) -> None:
    Path(path).write_text(json.dumps(report_dict(result), indent=2) + "\n", encoding="utf-8")


def print_summary(result) -> None:
    c = console()
    peak, total = result.peak_rss, sum(result.times.values())
    if c is None:
        print(f"artifact: {result.path} written in {total:.1f} s, peak memory {peak / 2**30:.2f} GiB",
              file=sys.stderr)
        return
    from rich.table import Table  # noqa: PLC0415

    t = Table(title="files")
    t.add_column("file")
    t.add_column("size", justify="right")
    for f, n in result.files.items():
        t.add_row(f, human_bytes(n))
    c.print(t)
    if result.validation:
        t3 = Table(title="validation vs PyTorch (all within tolerance)")
        t3.add_column("graph")
        t3.add_column("output")
        t3.add_column("max abs err", justify="right")
        for g, errs in result.validation.items():
            worst = max(errs, key=errs.get) if errs else "-"
            t3.add_row(g, f"{worst} (worst of {len(errs)})", f"{errs.get(worst, 0):.2e}")
        c.print(t3)
    else:
        c.print("[yellow]validation skipped[/yellow]")
    # The stages' times were printed as they ran; here the total.
    c.print(f"artifact {result.path} written in {total:.1f} s, peak memory {peak / 2**30:.2f} GiB",
            highlight=False, soft_wrap=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
