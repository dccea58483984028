"""``sdar-bench``: what generation costs on this machine, compared with other ways to run the same weights.

    sdar-bench [ARTIFACT_OR_MODEL_DIR | --shape 0.6b] [--runs 3] [--warmup 1] [--max-new-tokens 64]
               [--block-lengths 4 8 16] [--steps 2 4] [--threshold 0.9 0.7] [--remasking POLICY]
               [--batch 1 4] [--prompt-lengths 16 256] [--prompts FILE] [--threads N]
               [--baselines reference,ar,ort-genai,llama.cpp] [--llama-cpp SOURCE_DIR] [--llama-cpp-isa auto]
               [--pp-tokens 512]
               [--int4 [--group-size 128] [--lm-head-bits {4,8}]] [--min-run-seconds 0.5]
               [--memory-calls N] [--json OUT.json | --json -] [--plot OUT.png] [--markdown OUT.md]

Every combination of block length x batch x prompt length x steps x threshold is run with the fused
commit pass and with a separate commit pass; both must give the same tokens, batched rows must equal
the batch-1 tokens, and the ``reference`` baseline must give sdar_rt's tokens, before any speed is
reported (exit status 3 otherwise). A run is one pass over the prompt set, repeated until it lasts
``--min-run-seconds`` (0.5 s; measured on an untimed pass first). Per configuration: generated
tokens/s over all runs with the slowest and fastest run, TPF (tokens per decode forward), NFE, time
to first block, per-block latency, engine vs host time, peak RSS. The tables go to stderr; the JSON
report only with ``--json`` (and a plot next to it, or at ``--plot``).

Comparisons run on the first configuration's prompts, each in alternating rounds with a fresh
sdar_rt measurement so that both sides see the same load, reported as a ratio (sdar_rt tok/s /
theirs) with its spread over rounds: ``reference`` (SDAR decoding in plain PyTorch with a KV cache),
``ar`` (the network exported with block length 1 and run by sdar_rt, one forward per token),
``ort-genai`` (onnxruntime-genai's AR generator, built by its own model builder from the same
weights), ``llama.cpp`` (llama-bench on the weights converted to GGUF by llama.cpp's own converter;
decode rates after the prompt's prefill on both sides). Against onnxruntime-genai and llama.cpp,
prompt processing (``--pp-tokens``, 512) is timed too. ``--int4`` adds sdar_rt with int4 weights
(``sdar-export --int4``; ``--group-size``, default 128; ``--lm-head-bits 4|8`` quantizes the LM
head, which stays float by default) against the float weights, and with ``ort-genai`` also against
onnxruntime-genai's own int4 model with the same scheme and LM head, and with ``llama.cpp`` against
Q4_0 with every matrix Q4_0. Against an AR peer the break-even TPF is shown: the tokens per forward
at which sdar_rt decodes as fast as the peer. A model dir is exported once per configuration into
the cache that sdar-demo shares (``~/.cache/sdar_rt``); ``--shape 0.6b`` benchmarks random weights
with Qwen3-0.6B's dimensions.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..artifact import ArtifactError
from .checks import BenchMismatch
from .comparisons import BASELINES


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdar-bench",
        description=__doc__.split("\n\n")[0].strip("`").replace("``sdar-bench``: ", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "target",
        nargs="?",
        default=None,
        help="artifact dir, HF SDAR checkpoint dir or Hub id ORG/NAME (default: the packaged checkpoint)",
    )
    p.add_argument(
        "--shape", default=None, help="benchmark a random-weight checkpoint of this shape: 0.6b, 1.7b"
    )
    p.add_argument("--model-dir", default=None, help="the checkpoint of an artifact target (for baselines)")
    p.add_argument(
        "--runs", type=int, default=3, help="timed passes over the prompt set (rounds in comparisons)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before each measurement")
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
        choices=["sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded"],
        help="entropy_bounded runs at its default budget, eb_threshold 0.35",
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
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of sdar_rt's engine (the CPU engine's pool, or ONNX Runtime's intra-op threads; "
        "default: the physical cores) and of every peer (torch, onnxruntime-genai, llama.cpp)",
    )
    p.add_argument("--baselines", default="", help="comma list of: " + ", ".join(BASELINES))
    p.add_argument(
        "--max-context",
        type=int,
        default=None,
        help="export max context (default: the exporter's; 1024 with --shape)",
    )
    p.add_argument("--fp16", action="store_true", help="export in float16")
    p.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "cpu", "ort", "trt"],
        help="sdar_rt's engine (auto: TensorRT when built and the artifact has plans, else the native CPU "
        "engine when the artifact has its weights, else ONNX Runtime)",
    )
    p.add_argument(
        "--device",
        default=None,
        choices=["cpu", "cuda"],
        help="where sdar_rt's decoding loop runs (default: cuda for TensorRT, else cpu)",
    )
    p.add_argument(
        "--cpu-kernels",
        default="auto",
        help="the CPU engine's kernel table: auto (the best this CPU runs) or one of "
        "sdar_rt._core.cpu_kernels_available() (e.g. avx2 on an AVX-512 CPU)",
    )
    p.add_argument("--memory-calls", type=int, default=0, help="generate calls for a memory-flatness run")
    p.add_argument(
        "--int4",
        action="store_true",
        help="also compare int4 weights with float (and with onnxruntime-genai's int4 model)",
    )
    p.add_argument("--group-size", type=int, default=None, help="--int4 group size (default 128)")
    p.add_argument(
        "--lm-head-bits",
        type=int,
        default=None,
        choices=[4, 8],
        help="--int4: quantize the LM head with these bits (default: float head)",
    )
    p.add_argument(
        "--llama-cpp",
        default=None,
        metavar="SOURCE_DIR",
        help="the llama.cpp baseline: build and use this llama.cpp source tree (default: the llama.cpp "
        "of llama-cpp-python's source on PyPI, fetched with pip and built once)",
    )
    p.add_argument(
        "--llama-cpp-isa",
        default="auto",
        choices=["auto", "native", "avx512vnni", "avxvnni", "avx2"],
        help="the instruction sets llama.cpp is built for: native (everything this CPU has), or those of "
        "one sdar_rt kernel table; auto (default): native, or --cpu-kernels' table when that is narrower",
    )
    p.add_argument(
        "--pp-tokens",
        type=int,
        default=512,
        help="prompt processing: the prompt length timed against onnxruntime-genai and llama.cpp "
        "(capped by the artifact's context; 0: not timed)",
    )
    p.add_argument(
        "--min-run-seconds",
        type=float,
        default=0.5,
        help="a run repeats the prompt set until it lasts at least this long (0: one pass)",
    )
    p.add_argument(
        "--json", default=None, help="write the report here as JSON ('-': print it on stdout instead)"
    )
    p.add_argument(
        "--markdown",
        default=None,
        metavar="OUT.md",
        help="also write the comparisons as a Markdown table, with the command, date and machine",
    )
    p.add_argument(
        "--plot",
        default=None,
        help='PNG plot path (default: next to --json); needs matplotlib: pip install "sdar_rt[bench]"',
    )
    return p


def _err(msg: str) -> None:
    print(f"sdar-bench: {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    from .run import run

    a = parser().parse_args(argv)
    a._argv, a._report = argv, None
    try:
        report = run(a)
    except BenchMismatch as exc:
        _err(f"OUTPUT MISMATCH: {exc}")
        if a.json not in (None, "-") and a._report is not None:
            Path(a.json).write_text(json.dumps(a._report, indent=2, default=str) + "\n")
        return 3
    except (ArtifactError, ValueError, RuntimeError, OSError) as exc:
        _err(f"error: {exc}")
        return 2
    from . import plot
    from .tables import print_report

    print_report(report)
    to_file = a.json not in (None, "-")
    plot_path = Path(a.plot) if a.plot else (Path(a.json).with_suffix(".png") if to_file else None)
    if plot_path is not None:
        why_not = plot.write(report, plot_path)
        if why_not is None:
            report["plot"] = str(plot_path)
        else:
            _err(f"no plot written: {why_not}")
    if a.markdown:
        from .markdown import render

        Path(a.markdown).write_text(render(report))
        _err(f"wrote {a.markdown}")
    text = json.dumps(report, indent=2, default=str)
    if to_file:
        Path(a.json).write_text(text + "\n")
        _err(f"wrote {a.json}" + (f" and {plot_path}" if report.get("plot") else ""))
    elif a.json == "-":
        print(text)
    elif report.get("plot"):
        _err(f"wrote {plot_path}")
    return 0
