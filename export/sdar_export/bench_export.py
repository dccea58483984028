"""Export benchmark on a real model shape: each stage's wall time and peak memory, and the artifact's size.

    python -m sdar_export.bench_export [--preset qwen3-1.7b] [--fp16] [--int4] [--workdir DIR] [--json OUT]

Makes a random-weight checkpoint of the preset's real dimensions (bfloat16 on disk, as released
checkpoints are; cached in the work dir), runs ``sdar-export`` on it in a child process with
``--report``, and prints the exporter's own record: per stage the seconds and the peak resident
memory (RSS, also as a multiple of the checkpoint's size), then the artifact's size against the
weights it stores. The numbers are the exporter's, measured inside it (sdar_export.stages), not this
script's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .make_checkpoint import PRESETS, make_checkpoint
from .report import human_bytes
from .stages import console

GIB = 2**30


def summarize(report: dict, wall: float, settings: dict) -> dict:
    """The benchmark's JSON: the settings, the stages with their ratios, the sizes and their ratios."""
    ck = report["checkpoint_bytes"]
    stages = [{**s, "peak_vs_checkpoint": round(s["peak_rss"] / ck, 3)} for s in report["stages"]]
    return {
        **settings,
        "wall_seconds": round(wall, 1),
        "stages": stages,
        "peak_rss_gib": round(report["peak_rss"] / GIB, 2),
        "peak_vs_checkpoint": round(report["peak_rss"] / ck, 3),
        "checkpoint_gib": round(ck / GIB, 3),
        "weights_gib": round(report["weights_bytes"] / GIB, 3),
        "artifact_gib": round(report["artifact_bytes"] / GIB, 3),
        "graphs_and_weights_gib": round(report["graphs_and_weights_bytes"] / GIB, 3),
        "graphs_and_weights_vs_weights": round(report["graphs_and_weights_bytes"] / report["weights_bytes"],
                                               3),
        "bytes": {k: report[f"{k}_bytes"]
                  for k in ("checkpoint", "weights", "artifact", "graphs_and_weights")},
        "files": report["files"],
        "machine": report["machine"],
    }


def print_table(result: dict) -> None:
    c = console()
    lines = [f"{s['stage']}: {s['seconds']:.1f} s, peak {s['peak_rss'] / GIB:.2f} GiB "
             f"({s['peak_vs_checkpoint']:.2f}x the checkpoint)" for s in result["stages"]]
    r = result
    size = {k: human_bytes(r["bytes"][k]) for k in r["bytes"]}
    tail = "; ".join([
        f"peak {r['peak_rss_gib']:.2f} GiB = {r['peak_vs_checkpoint']:.2f}x the {size['checkpoint']} "
        "checkpoint",
        f"graphs + weights file {size['graphs_and_weights']} = {r['graphs_and_weights_vs_weights']:.3f}x "
        f"the {size['weights']} of weights they store",
        f"whole artifact {size['artifact']}",
        f"{r['wall_seconds']:.0f} s"])
    if c is None:
        print("\n".join([*lines, tail]), file=sys.stderr)
        return
    from rich.table import Table  # noqa: PLC0415

    weights = f" {r['weights']}" if r["weights"] else ""
    t = Table(title=f"sdar-export {r['preset']} {r['dtype']}{weights}")
    for col in ("stage", "seconds", "peak RSS", "x checkpoint"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for s in r["stages"]:
        t.add_row(s["stage"], f"{s['seconds']:.1f}", f"{s['peak_rss'] / GIB:.2f} GiB",
                  f"{s['peak_vs_checkpoint']:.2f}")
    c.print(t)
    c.print(tail, highlight=False, soft_wrap=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdar_export.bench_export",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="qwen3-1.7b", choices=sorted(PRESETS))
    p.add_argument("--fp16", action="store_true", help="export in float16 (default float32)")
    p.add_argument("--int4", action="store_true", help="4-bit weights (sdar-export --int4)")
    p.add_argument("--max-context", type=int, default=4096)
    p.add_argument("--workdir", default=None,
                   help="where the checkpoint and artifact go (default: ./bench-export)")
    p.add_argument("--skip-validate", action="store_true")
    p.add_argument("--json", default=None, help="also write the result here")
    a = p.parse_args(argv)

    work = Path(a.workdir or "bench-export").resolve()
    ckpt = work / f"{a.preset}-ckpt"
    tag = ("fp16" if a.fp16 else "fp32") + ("-int4" if a.int4 else "")
    art = work / f"{a.preset}-{tag}-artifact"
    if not (ckpt / "config.json").is_file():
        print(f"making a random {a.preset} checkpoint in {ckpt} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        make_checkpoint(ckpt, preset=a.preset, seed=0, dtype="bfloat16")
        print(f"  done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    report_path = work / f"{a.preset}-{tag}-report.json"
    cmd = [sys.executable, "-m", "sdar_export.cli", str(ckpt), "-o", str(art), "--force",
           "--max-context", str(a.max_context), "--report", str(report_path)]
    cmd += ["--fp16"] if a.fp16 else []
    cmd += ["--int4"] if a.int4 else []
    cmd += ["--skip-validate"] if a.skip_validate else []
    print("running: " + " ".join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"sdar-export failed (exit code {proc.returncode})", file=sys.stderr)
        return proc.returncode
    settings = {"preset": a.preset, "dtype": "float16" if a.fp16 else "float32",
                "weights": "int4" if a.int4 else None, "max_context": a.max_context,
                "validated": not a.skip_validate}
    result = summarize(json.loads(report_path.read_text()), wall, settings)
    print_table(result)
    text = json.dumps(result, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
