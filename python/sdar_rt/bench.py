"""``sdar-bench``: what generation costs on this machine, measured against baselines, with JSON out.

    sdar-bench [ARTIFACT_OR_MODEL_DIR | --shape 0.6b] [--runs 3] [--warmup 1] [--max-new-tokens 64]
               [--block-lengths 4 8 16] [--steps 2 4] [--threshold 0.9 0.7] [--remasking POLICY]
               [--batch 1 4] [--prompt-lengths 16 256] [--prompts FILE] [--threads N]
               [--baselines reference,ar,ort-genai] [--memory-calls N] [--json OUT.json] [--plot OUT.png]
               [--int4 [--group-size 128] [--lm-head-bits {4,8}]]

Every combination of block length x batch x prompt length x steps x threshold is run with the fused
commit pass and with a separate commit pass; both must give the same tokens, batched rows must equal
the batch-1 tokens, and the ``reference`` baseline (plain PyTorch SDAR decoding with a KV cache, same
weights) must give sdar_rt's tokens, before any speed is reported (exit status 3 otherwise). Reported
per configuration: generated tokens/s (wall clock around the call), time to first block, per-block
latency (median/p90/p99), NFE, TPF, engine vs host time, peak RSS. Baselines run on the first
configuration's prompts and are reported as ratios to it: ``reference``, ``ar`` (the same network
exported with block length 1, i.e. causal, decoded by sdar_rt one forward per token) and
``ort-genai`` (onnxruntime-genai's AR generator on the same weights, exported as Qwen3). A model dir
is exported once per block length / batch (cached under ~/.cache/sdar_rt/bench); ``--shape 0.6b``
benchmarks a random-weight checkpoint with Qwen3-0.6B's dimensions.

``--int4`` also exports the checkpoint with ``sdar-export --int4`` (``--group-size``, default 128;
``--lm-head-bits 4|8`` quantizes the LM head too, which the exporter keeps in float by default) and
runs the first configuration (batch 1, fused commit) on it right after the float sweep: tok/s, TPF
and the ratio to float for each weight format, greedy-token agreement with the float tokens (equal
tokens and equal rows) and the TPF change (``weights`` in the JSON; the target is >= 2x float tok/s).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

from .artifact import ArtifactError
from .bench_runs import time_baseline, time_sdar

DEFAULT_PROMPTS = (
    "Write one sentence about the sea.",
    "List three colours.",
    "What is two plus two?",
    "Name a city in France.",
)
BASELINES = ("reference", "ar", "ort-genai")


class BenchMismatch(RuntimeError):
    """Two runs that must produce the same tokens did not: no speed is reported."""


def _log(msg: str) -> None:
    print(f"sdar-bench: {msg}", file=sys.stderr, flush=True)


def _prompt_texts(gen, path: str | None, model_dir: Path | None = None) -> list[str]:
    """--prompts FILE, else the prompts of the model's task (``bench_prompts.txt`` in the artifact or
    the checkpoint dir, e.g. the packaged digit sorter's), else general prompts."""
    if path:
        lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
        if not lines:
            raise ValueError(f"{path}: no prompts (one prompt per line)")
        return lines
    for folder in (gen.artifact.path, model_dir):
        task = folder / "bench_prompts.txt" if folder is not None else None
        if task is not None and task.is_file():
            return [line for line in task.read_text().splitlines() if line.strip()]
    return list(DEFAULT_PROMPTS)


def _prompt_ids(gen, texts: list[str], length: int | None) -> list[list[int]]:
    """Token ids of the prompt set (chat template applied when the tokenizer has one), or, with
    ``length``, prompts of exactly that many tokens cycled from them (distinct per prompt)."""
    ids = [gen._encode_prompt(t, None) for t in texts]
    if length is None:
        return ids
    pool = [t for p in ids for t in p]
    return [[pool[(13 * i + j) % len(pool)] for j in range(length)] for i in range(len(ids))]


class Checks:
    """Equality checks; a failed one raises BenchMismatch at once."""

    def __init__(self):
        self.items: list[dict] = []

    def equal(self, what: str, a: list, b: list) -> None:
        bad = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        self.items.append(
            {"check": what, "calls": len(a), "equal": not bad, "first_mismatch": bad[0] if bad else None}
        )
        if bad:
            i = bad[0]
            raise BenchMismatch(
                f"{what}: tokens differ in {len(bad)} of {len(a)} calls (first: call {i}: "
                f"{a[i]} vs {b[i]}); not reporting speed"
            )

    @property
    def passed(self) -> bool:
        return all(c["equal"] for c in self.items)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdar-bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "target",
        nargs="?",
        default=None,
        help="artifact dir or HF SDAR checkpoint dir (default: the packaged tiny checkpoint)",
    )
    p.add_argument(
        "--shape", default=None, help="benchmark a random-weight checkpoint of this shape: 0.6b, 1.7b"
    )
    p.add_argument("--model-dir", default=None, help="the checkpoint of an artifact target (for baselines)")
    p.add_argument("--runs", type=int, default=3, help="timed passes over the prompt set")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before each configuration")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument(
        "--block-lengths", type=int, nargs="+", default=None, help="(default: 4, or the artifact's)"
    )
    p.add_argument(
        "--steps", type=int, nargs="+", default=None, help="denoising steps (default: block length)"
    )
    p.add_argument("--threshold", type=float, nargs="+", default=[0.9])
    p.add_argument(
        "--remasking",
        default="low_confidence_dynamic",
        choices=["sequential", "low_confidence_static", "low_confidence_dynamic"],
    )
    p.add_argument(
        "--batch", type=int, nargs="+", default=[1], help="parallel samples per call (num_samples)"
    )
    p.add_argument(
        "--prompt-lengths",
        type=int,
        nargs="+",
        default=None,
        help="synthetic prompts of exactly these token counts (default: the prompt set as is)",
    )
    p.add_argument("--prompts", default=None, help="file with one prompt per line")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (ORT, torch, ort-genai)")
    p.add_argument("--baselines", default="", help="comma list of: " + ", ".join(BASELINES))
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="export max context (default: exporter's; 1024 with --shape)",
    )
    p.add_argument("--fp16", action="store_true", help="export in float16")
    p.add_argument("--engine", default="auto", choices=["auto", "ort", "trt", "cpu"],
                   help="sdar_rt's engine (auto: TensorRT when built and the artifact has plans, else the "
                        "native CPU engine when the artifact has its weights, else ONNX Runtime)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="where sdar_rt's decoding loop runs (default: cuda for TensorRT, else cpu)")
    p.add_argument("--memory-calls", type=int, default=0, help="generate calls for a memory-flatness run")
    p.add_argument("--int4", action="store_true",
                   help="also run the checkpoint exported with --int4 and compare it with the float weights")
    p.add_argument("--group-size", type=int, default=None, help="--int4 group size (default 128)")
    p.add_argument("--lm-head-bits", type=int, default=None, choices=[4, 8],
                   help="--int4: quantize the LM head with these bits (default: float head)")
    p.add_argument("--json", default=None, help="write the report here (default: print it on stdout)")
    p.add_argument("--plot", default=None, help="PNG plot path (default: next to --json; needs matplotlib)")
    return p


def _device_memory_mib(gen) -> float | None:
    """GPU memory in use (total - free, all processes) after a run, when the loop runs on the GPU.
    sdar_rt allocates its device memory once per Generator, so this is its steady state; on a
    Jetson the GPU shares RAM with the CPU (tegrastats shows both)."""
    if gen.device != "cuda":
        return None
    from . import _core

    free, total = _core.cuda_memory_info()
    return (total - free) / 2**20


def _memory_run(gen, prompts, calls: int, kwargs: dict) -> dict:
    from .bench_runs import rss_mib

    samples = []
    every = max(1, calls // 20)
    for i in range(calls):
        gen.generate(prompt_ids=prompts[i % len(prompts)], **kwargs)
        if i % every == 0 or i == calls - 1:
            samples.append((i + 1, rss_mib()))
    half = len(samples) // 2
    first = sum(m for _, m in samples[1:half]) / max(1, half - 1) if half > 1 else samples[0][1]
    second = sum(m for _, m in samples[half:]) / len(samples[half:])
    return {
        "calls": calls,
        "rss_mib": samples,
        "rss_first_half_mib": first,
        "rss_second_half_mib": second,
        "growth_mib": second - first,
    }


def _sdar_sweep(a, targets, checks: Checks, report: dict) -> dict:
    """All sdar_rt configurations; returns the primary (first, batch 1, fused) context for baselines."""
    from .generator import Generator

    lengths = a.block_lengths or [targets.default_block_length()]
    batches = sorted(set(a.batch) | {1})
    plens = a.prompt_lengths or [None]
    b1_outputs: dict = {}
    primary: dict = {}
    for L in lengths:
        for B in batches:
            gen = Generator(targets.artifact(L, B), engine=a.engine, device=a.device, threads=a.threads)
            texts = _prompt_texts(gen, a.prompts, targets.model_dir)
            report["settings"].setdefault("prompts", texts)
            for P in plens:
                prompts = _prompt_ids(gen, texts, P)
                for steps in a.steps or [None]:
                    if steps is not None and steps > L:
                        report["summary"].append(f"skipped steps {steps} > block length {L}")
                        continue
                    for thr in a.threshold:
                        cfg = {
                            "block_length": L,
                            "steps": steps or L,
                            "threshold": thr,
                            "remasking": a.remasking,
                            "batch": B,
                            "prompt_length": P,
                        }
                        kw = dict(
                            max_new_tokens=a.max_new_tokens,
                            denoising_steps=steps,
                            remasking=a.remasking,
                            threshold=thr,
                        )
                        _log(f"sdar_rt {cfg}: {a.runs} x {len(prompts)} calls, fused and separate commit")
                        (fused, out_f), (sep, out_s) = (
                            time_sdar(gen, prompts, runs=a.runs, warmup=a.warmup,
                                      kwargs={**kw, "fused_commit": commit_fused}, num_samples=B)
                            for commit_fused in (True, False)
                        )
                        checks.equal(f"fused vs separate commit {cfg}", out_f, out_s)
                        key = (L, P, steps, thr)
                        if B == 1:
                            b1_outputs[key] = out_f
                        else:
                            single = [[rows[0]] * B for rows in b1_outputs[key]]
                            checks.equal(f"batch {B} rows vs batch 1 {cfg}", out_f, single)
                        for row, commit in ((fused, "fused"), (sep, "separate")):
                            row.update(system="sdar_rt", config={**cfg, "commit": commit},
                                       engine=type(gen.engine).__name__, device=gen.device,
                                       device_memory_in_use_mib=_device_memory_mib(gen))
                            report["results"].append(row)
                        if not primary:
                            primary = {
                                "row": fused,
                                "outputs": out_f,
                                "prompts": prompts,
                                "kwargs": kw,
                                "artifact": gen.artifact,
                                "config": cfg,
                            }
                            if a.memory_calls > 0:
                                _log(f"memory run: {a.memory_calls} calls")
                                report["memory"] = _memory_run(gen, prompts, a.memory_calls, kw)
            del gen
            gc.collect()
    return primary


def _limits(primary: dict) -> list[int]:
    """Per prompt, the number of tokens sdar_rt generated (first run, row 0): the AR baselines generate
    at most that many, so that every system amortises its prefill over the same output length (an
    early EOS would otherwise make one system's tokens/s look worse for generating less)."""
    n = len(primary["prompts"])
    return [max(1, len(rows[0])) for rows in primary["outputs"][:n]]


def _ar(a, targets, primary: dict) -> dict:
    from .generator import Generator

    prompts = primary["prompts"]
    gen = Generator(targets.artifact(1, 1), engine=a.engine, device=a.device, threads=a.threads)
    _log(f"ar baseline (block length 1, one forward per token): {a.runs} x {len(prompts)} calls")
    kwargs = {"max_new_tokens": a.max_new_tokens, "denoising_steps": 1, "fused_commit": True}
    row, _ = time_sdar(gen, prompts, runs=a.runs, warmup=a.warmup, kwargs=kwargs, limits=_limits(primary))
    row.update(
        system="ar",
        config={
            "block_length": 1,
            "steps": 1,
            "batch": 1,
            "commit": "fused",
            "prompt_length": primary["config"]["prompt_length"],
        },
    )
    return row


def _reference(a, targets, primary: dict, checks: Checks) -> dict:
    from .bench_reference import ReferenceDecoder

    prompts, kw, art = primary["prompts"], primary["kwargs"], primary["artifact"]
    ref = ReferenceDecoder(
        targets.need_weights("reference"),
        block_length=art.block_length,
        mask_id=art.mask_id,
        eos_ids=art.eos_ids,
        threads=a.threads,
    )
    _log(f"reference baseline (PyTorch, KV cache): {a.runs} x {len(prompts)} calls")

    def generate(p, _i):
        return ref.generate(
            p,
            max_new_tokens=kw["max_new_tokens"],
            denoising_steps=kw["denoising_steps"],
            remasking=kw["remasking"],
            threshold=kw["threshold"],
        )

    row, outs = time_baseline(generate, prompts, runs=a.runs, warmup=a.warmup)
    checks.equal("reference (PyTorch) vs sdar_rt", outs, primary["outputs"])
    row.update(system="reference", config={**primary["config"], "commit": "separate"})
    return row


def _ort_genai(a, targets, primary: dict) -> dict:
    from . import bench_ortgenai as oga
    from .bench_artifacts import _checkpoint_key, cache_dir

    reason = oga.missing_reason()
    if reason:
        _log(f"ort-genai baseline skipped: {reason}")
        return {"skipped": reason}
    model_dir = targets.need_weights("ort-genai")
    out = cache_dir() / "ort-genai" / f"{model_dir.name}-{_checkpoint_key(model_dir)}-fp32"
    runner = oga.OrtGenaiRunner(oga.build(model_dir, out, log=_log), threads=a.threads)
    prompts = primary["prompts"]
    _log(f"ort-genai baseline (onnxruntime-genai AR, fp32): {a.runs} x {len(prompts)} calls")
    limits = _limits(primary)
    row, _ = time_baseline(
        lambda p, i: runner.generate(p, max_new_tokens=limits[i]), prompts, runs=a.runs, warmup=a.warmup
    )
    row.update(
        system="ort-genai",
        config={
            "block_length": 1,
            "steps": 1,
            "batch": 1,
            "prompt_length": primary["config"]["prompt_length"],
        },
        note="causal LM semantics (next-token logits): tokens not compared with sdar_rt",
    )
    return row


def _baselines(a, names: list[str], targets, primary: dict, checks: Checks) -> dict:
    """Each baseline on the primary configuration's prompts, one model in memory at a time."""
    out: dict = {}
    for name in names:
        if name == "ar":
            row = _ar(a, targets, primary)
        elif name == "reference":
            row = _reference(a, targets, primary, checks)
        else:
            row = _ort_genai(a, targets, primary)
        gc.collect()
        if "tokens_per_second" in row:
            row["sdar_rt_speedup"] = primary["row"]["tokens_per_second"] / row["tokens_per_second"]
            mine, theirs = primary["row"].get("tokens_per_cpu_second"), row.get("tokens_per_cpu_second")
            row["sdar_rt_speedup_cpu"] = mine / theirs if mine and theirs else None
        out[name] = row
    return out


def _summary(report: dict, primary: dict) -> None:
    from .bench_report import config_label

    s = report["summary"]
    p = primary["row"]
    s.insert(
        0,
        f"equality: {len(report['equality']['checks'])} checks passed (fused/separate commit"
        + (
            ", batch rows"
            if any(c["check"].startswith("batch") for c in report["equality"]["checks"])
            else ""
        )
        + (", PyTorch reference" if "reference" in report["baselines"] else "")
        + ")",
    )
    s.append(
        f"sdar_rt {config_label(primary['config'])} {primary['config']['remasking']}: "
        f"{p['tokens_per_second']:.1f} tok/s, TPF {p['tpf']:.2f}, "
        f"host {100 * p['host_fraction']:.1f}% of wall "
        f"({100 * (p['outside_ort_fraction'] or 0):.1f}% outside ONNX Runtime)"
    )
    for name, b in report["baselines"].items():
        if "tokens_per_second" in b:
            cpu = b.get("sdar_rt_speedup_cpu")
            s.append(
                f"{name}: {b['tokens_per_second']:.1f} tok/s -> sdar_rt is {b['sdar_rt_speedup']:.2f}x"
                + (f" ({cpu:.2f}x per process CPU-second)" if cpu else "")
            )
    by_plen = [
        r
        for r in report["results"]
        if r["config"]["commit"] == "fused"
        and r["config"]["batch"] == 1
        and r["config"]["block_length"] == primary["config"]["block_length"]
        and r["config"]["threshold"] == primary["config"]["threshold"]
        and r["config"]["steps"] == primary["config"]["steps"]
    ]
    if len({r["config"]["prompt_length"] for r in by_plen}) > 1:
        parts = ", ".join(
            f"{r['config']['prompt_length']} tok: {r['ms_per_decode_forward']:.2f} ms/forward"
            for r in by_plen
        )
        s.append(f"cost vs actual context (max context {primary['artifact'].max_context}): {parts}")
    if report.get("weights"):
        from .bench_weights import summary_line

        s.append(summary_line(report["weights"]))


def run(a) -> dict:
    from .bench_artifacts import Targets, checkpoint_info
    from .bench_report import check_targets, machine

    names = [n.strip() for n in a.baselines.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    for flag, value in (("--runs", a.runs), ("--max-new-tokens", a.max_new_tokens)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1")
    if any(b < 1 for b in a.batch):
        raise ValueError("--batch values must be >= 1")
    if not a.int4 and (a.group_size is not None or a.lm_head_bits is not None):
        raise ValueError("--group-size and --lm-head-bits apply to the --int4 comparison; add --int4")
    max_context = a.max_context or (1024 if a.shape else None)
    targets = Targets(a.target, shape=a.shape, model_dir=a.model_dir, fp16=a.fp16, max_context=max_context)
    name = a.shape and f"random {a.shape}" or str(targets.fixed_artifact or targets.model_dir)
    report = {
        "tool": "sdar-bench",
        "report_version": 2,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "argv": sys.argv[1:] if a._argv is None else list(a._argv),
        "machine": machine(),
        "target": {
            "name": name,
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
            "dtype": targets.dtype,
            "max_context": max_context,
            "temperature": 0.0,
        },
        "results": [],
        "baselines": {},
        "targets": [],
        "summary": [],
        "equality": {"passed": False, "checks": []},
    }
    checks = Checks()
    report["equality"]["checks"] = checks.items
    try:
        primary = _sdar_sweep(a, targets, checks, report)
        if a.int4:  # right after the float run: the ratio sees the same machine load
            from .bench_artifacts import LowBit
            from .bench_weights import compare

            lowbit = LowBit(group_size=a.group_size or 128, lm_head_bits=a.lm_head_bits)
            report["weights"] = compare(a, targets, primary, lowbit)
        report["baselines"] = _baselines(a, names, targets, primary, checks)
    except BenchMismatch as exc:
        report["error"] = str(exc)
        report["results"], report["baselines"] = [], {}  # no speed without equal tokens
        raise BenchMismatch(str(exc)) from exc
    finally:
        report["equality"]["passed"] = bool(checks.items) and checks.passed
        a._report = report
    art = primary["artifact"]
    report["target"]["primary_artifact"] = str(art.path)
    report["settings"]["prompt_token_lengths"] = [len(p) for p in primary["prompts"]]
    report["settings"]["baseline_max_new_tokens"] = _limits(primary)  # ar / ort-genai: matched lengths
    report["targets"] = check_targets(primary["row"], report["baselines"])
    report["peak_rss_mib_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    _summary(report, primary)
    return report


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    a._argv, a._report = argv, None
    try:
        report = run(a)
    except BenchMismatch as exc:
        print(f"sdar-bench: OUTPUT MISMATCH: {exc}", file=sys.stderr)
        if a.json and a._report is not None:
            Path(a.json).write_text(json.dumps(a._report, indent=2, default=str) + "\n")
        return 3
    except (ArtifactError, ValueError, RuntimeError, OSError) as exc:
        print(f"sdar-bench: error: {exc}", file=sys.stderr)
        return 2
    from .bench_report import plot, print_tables

    print_tables(report)
    plot_path = Path(a.plot) if a.plot else (Path(a.json).with_suffix(".png") if a.json else None)
    if plot_path is not None and plot(report, plot_path) is not None:
        report["plot"] = str(plot_path)
    text = json.dumps(report, indent=2, default=str)
    if a.json:
        Path(a.json).write_text(text + "\n")
        print(
            f"sdar-bench: wrote {a.json}" + (f" and {plot_path}" if report.get("plot") else ""),
            file=sys.stderr,
        )
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
