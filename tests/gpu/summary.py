"""The summary of tests/gpu/check.sh: reads what its steps left in OUT (gpu.tsv, steps.tsv, junit.xml,
timings.json, trt-check.json), adds the machine (GPU and driver from the CUDA driver's probe, CUDA,
TensorRT), writes OUT/gpu-check.json and prints a table.

    python tests/gpu/summary.py OUT

Exit status 0 only when every step passed and no GPU test was skipped: on a machine with a GPU a
skip means the GPU path did not run (a build without the kernels, a torch without CUDA), which is
a failure of the check, not a pass.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine(out: Path) -> dict:
    """The GPU as the CUDA driver describes it (check.sh's probe wrote gpu.tsv: no nvidia-smi, which
    JetPack does not ship), and the toolchain."""
    path = out / "gpu.tsv"
    fields = path.read_text().rstrip("\n").split("\t") if path.is_file() else []
    nvcc = _run("nvcc", "--version").splitlines()
    torch_cuda = _run(sys.executable, "-c", "import torch; print(torch.__version__, torch.version.cuda)")
    build = _run(sys.executable, "-c", "import json, sdar_rt._core as c; "
                 "print(json.dumps({'module': c.__file__, **c.build_info()}))")
    tensorrt = _run(sys.executable, "-c", "import tensorrt; print(tensorrt.__version__)")
    names = ("gpu", "compute_capability", "integrated", "driver_cuda")
    return {
        **dict(zip(names, fields, strict=False)),
        "nvcc": nvcc[-1] if nvcc else "not found",
        "torch_and_cuda": torch_cuda or "torch not importable",
        "tensorrt": tensorrt or "not importable",
        "sdar_rt_build": json.loads(build) if build else "sdar_rt not importable",
    }


def steps(out: Path) -> list[dict]:
    path = out / "steps.tsv"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, ms = line.split("\t")
        rows.append({"step": name, "exit_status": int(rc), "seconds": int(ms) / 1000})
    return rows


def tests(out: Path) -> list[dict]:
    """One entry per test case of junit.xml: outcome passed | failed | error | skipped (+ reason)."""
    path = out / "junit.xml"
    if not path.is_file():
        return []
    cases = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                reason = (child.get("message") or "").splitlines()[0][:200] if child.get("message") else ""
        cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "reason": reason, "seconds": float(case.get("time") or 0.0)})
    return cases


def table(summary: dict) -> str:
    m = summary["machine"]
    lines = [f"GPU: {m.get('gpu', '?')} (compute capability {m.get('compute_capability', '?')}"
             f"{', integrated' if m.get('integrated') == '1' else ''})  "
             f"driver CUDA {m.get('driver_cuda', '?')}  {m['nvcc']}  torch/CUDA {m['torch_and_cuda']}  "
             f"TensorRT {m['tensorrt']}"]
    for s in summary["steps"]:
        status = "ok" if s["exit_status"] == 0 else "FAILED"
        lines.append(f"  {s['step']:<8s} {status:<7s} {s['seconds']:7.1f} s")
    counts = summary["test_counts"]
    lines.append("  tests: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for t in summary["tests"]:
        if t["outcome"] in ("failed", "error"):
            lines.append(f"    {t['outcome'].upper():<8s} {t['test']}  {t['reason']}")
    skips: dict[str, int] = {}
    for t in summary["tests"]:
        if t["outcome"] == "skipped":
            skips[t["reason"]] = skips.get(t["reason"], 0) + 1
    for reason, n in skips.items():
        lines.append(f"    SKIPPED  {n} test(s): {reason}")
    timings = summary.get("timings") or {}
    kernel = timings.get("unmask_kernel", [])
    if kernel:
        lines.append("  unmasking kernel, median us per step (vocab "
                     f"{timings.get('vocab')}):  L  logits    policy                      us")
        for r in kernel:
            lines.append(f"{'':>53s}{r['block_length']:>2d}  {r['logits_dtype']:<9s} "
                         f"{r['mode'] + ' ' + r['policy']:<27s} {r['median_us']:6.1f}")
    for r in timings.get("device_loop", []):
        graphs = "" if r["cuda_graphs"] is None else f", CUDA graphs {'on' if r['cuda_graphs'] else 'off'}"
        lines.append(f"  device loop L={r['block_length']} ({r['engine']} engine{graphs}): "
                     f"{r['host_us_per_step']:.1f} us host time per step, "
                     f"{r['wall_us_per_step']:.1f} us wall")
    trt = summary.get("tensorrt_check")
    if trt:
        mib = 1 << 20
        lines.append(f"  TensorRT {trt['tensorrt']}: plan {trt['plan_bytes'] / mib:.1f} MiB built in "
                     f"{trt['build_seconds']:.1f} s; build peak "
                     f"{trt['build_peak_device_bytes'] / mib:.0f} MiB GPU, "
                     f"{trt['build_peak_rss_bytes'] / mib:.0f} MiB RSS (budgeted "
                     f"{(trt.get('build_peak_budgeted_bytes') or 0) / mib:.0f} MiB)")
        for c in trt["cases"]:
            verdict = "ok" if c["equal_cpu"] and c["equal_ort"] is not False else "DIFFERS"
            lines.append(f"    {verdict:<8s}{c['case']}")
    lines.append("  result: " + ("PASS" if summary["passed"] else "FAIL"))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path("build/gpu-check")
    cases = tests(out)
    counts: dict[str, int] = {}
    for c in cases:
        counts[c["outcome"]] = counts.get(c["outcome"], 0) + 1
    timings_path = out / "timings.json"
    trt_path = out / "trt-check.json"
    step_rows = steps(out)
    summary = {
        "machine": machine(out),
        "steps": step_rows,
        "test_counts": counts,
        "tests": cases,
        "timings": json.loads(timings_path.read_text()) if timings_path.is_file() else None,
        # only when the trt step ran (TensorRT importable): a file of an earlier run is not this one's
        "tensorrt_check": json.loads(trt_path.read_text())
        if trt_path.is_file() and any(s["step"] == "trt" for s in step_rows) else None,
    }
    summary["passed"] = (
        bool(step_rows)
        and all(s["exit_status"] == 0 for s in step_rows)
        and {s["step"] for s in step_rows} >= {"build", "ctest", "pytest", "timings"}
        and bool(cases)
        and set(counts) <= {"passed"}
    )
    (out / "gpu-check.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(summary))
    print(f"summary written to {out / 'gpu-check.json'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
