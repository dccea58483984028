"""One benchmark run: check the options, sweep sdar_rt's configurations, run the comparisons, and
assemble the report (the JSON document ``sdar-bench --json`` writes)."""

from __future__ import annotations

import resource
import sys
import time

from . import comparisons, summary, sweep
from .checks import BenchMismatch, Checks
from .machine import machine
from .progress import Phases
from .targets import Targets, checkpoint_info

REPORT_VERSION = 3


def _check_options(a, names: list[str]) -> None:
    unknown = [n for n in names if n not in comparisons.BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {', '.join(comparisons.BASELINES)}")
    for flag, value in (("--runs", a.runs), ("--max-new-tokens", a.max_new_tokens)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1")
    if a.pp_tokens < 0 or a.min_run_seconds < 0:
        raise ValueError("--pp-tokens and --min-run-seconds must be >= 0")
    if a.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    if any(b < 1 for b in a.batch):
        raise ValueError("--batch values must be >= 1")
    if a.cpu_kernels != "auto":
        from .. import _core

        if a.cpu_kernels not in _core.cpu_kernels_available():
            raise ValueError(f"--cpu-kernels {a.cpu_kernels!r}: this build and CPU run "
                             f"{', '.join(_core.cpu_kernels_available())}")
        if a.engine not in ("auto", "cpu"):
            raise ValueError("--cpu-kernels applies to the CPU engine: use --engine cpu (or auto)")
    if not a.int4 and (a.group_size is not None or a.lm_head_bits is not None):
        raise ValueError("--group-size and --lm-head-bits apply to the --int4 comparison; add --int4")


def _new_report(a, targets: Targets, max_context: int | None) -> dict:
    return {
        "tool": "sdar-bench",
        "report_version": REPORT_VERSION,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:] if a._argv is None else list(a._argv),
        "machine": machine(),
        "target": {
            "name": targets.name,
            "shape": a.shape,
            "model_dir": str(targets.model_dir) if targets.model_dir else None,
            "artifact": str(targets.fixed_artifact) if targets.fixed_artifact else None,
            "checkpoint": checkpoint_info(targets.model_dir) if targets.model_dir else None,
        },
        "settings": {
            "runs": a.runs,
            "warmup": a.warmup,
            "max_new_tokens": a.max_new_tokens,
            "remasking": a.remasking,
            "threads": a.threads,
            "min_run_seconds": a.min_run_seconds,
            "pp_tokens": a.pp_tokens,
            "cpu_kernels": a.cpu_kernels,
            "llama_cpp_isa": a.llama_cpp_isa,
            "dtype": targets.dtype,
            "max_context": max_context,
            "temperature": 0.0,
        },
        "results": [],
        "comparisons": [],
        "summary": [],
        "warnings": [],
        "equality": {"passed": False, "checks": []},
    }


def run(a) -> dict:
    names = [n.strip() for n in a.baselines.split(",") if n.strip()]
    _check_options(a, names)
    max_context = a.max_context or (1024 if a.shape else None)
    targets = Targets(a.target, shape=a.shape, model_dir=a.model_dir, fp16=a.fp16, max_context=max_context)
    report = _new_report(a, targets, max_context)
    groups, skipped = sweep.plan(a, targets.default_block_length())
    planned = comparisons.planned(names, a.int4)
    n_configs = sum(len(cfgs) for _, _, cfgs in groups)
    if n_configs == 0:
        raise ValueError(f"no configuration to run ({'; '.join(skipped)})")
    phases = Phases(n_configs + (1 if a.memory_calls > 0 else 0) + len(planned))
    checks = Checks()
    report["equality"]["checks"] = checks.items
    try:
        primary = sweep.run(a, targets, groups, checks, report, phases)
        runner = comparisons.Runner(a, targets, primary, checks, phases)
        for kind in planned:
            report["comparisons"].append(runner.run(kind))
    except BenchMismatch as exc:
        report["error"] = str(exc)
        report["results"], report["comparisons"] = [], []  # no speed without equal tokens
        raise
    finally:
        report["equality"]["passed"] = checks.passed
        a._report = report
    report["target"]["primary_artifact"] = str(primary["artifact"].path)
    report["settings"]["prompt_token_lengths"] = [len(p) for p in primary["prompts"]]
    report["settings"]["skipped"] = skipped
    report["peak_rss_mib_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["summary"] = summary.summary_lines(report, primary)
    report["warnings"] = summary.warnings(report)
    return report
