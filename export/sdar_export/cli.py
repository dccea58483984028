"""``sdar-export``: HF SDAR checkpoint -> sdar_rt artifact (ONNX step graphs, optional TensorRT plans).

    sdar-export MODEL_DIR|ORG/NAME [--revision REV] [-o OUT] [--fp16|--bf16] [--block-length 4]
                [--max-context N] [--batch 1]
                [--engine {onnx,trt}] [--opset 18] [--prefill-chunk N] [--skip-validate] [--force]
                [--int4 [--group-size 128] | --int8] [--symmetric|--asymmetric] [--quant-format F]
                [--quantize-embeddings] [--quantize-lm-head] [--lm-head-bits {4,8}] [--accuracy-level 4]
                [--awq [--calibration PROMPTS.txt]]
    sdar-export ARTIFACT_DIR --engine trt        # engines only, on the device, no torch import

A Hugging Face Hub id (``JetLM/SDAR-1.7B-Chat``) is fetched into the Hugging Face cache first
(sdar_export.hub: config.json checked before the weights; HF_TOKEN, HF_ENDPOINT, HF_HUB_OFFLINE apply);
its artifact goes to ./NAME-sdar_rt-DTYPE unless -o says otherwise.
The artifact is written into a temporary directory next to OUT and renamed into place at the end,
so an interrupted export never leaves a directory that looks like a valid artifact.
torch is imported only when a checkpoint is exported. The stages are sdar_export.pipeline's; every
option, its default and its checks are sdar_export.options.ExportOptions.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import trained_block_length
from .errors import CheckpointError, ExportError
from .hub import is_hub_id, resolve_checkpoint
from .options import DEFAULT_BLOCK_LENGTH, ExportOptions
from .pipeline import export, is_artifact, run_export

__all__ = ["export", "is_artifact", "main", "parser", "run_export"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdar-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="HF SDAR checkpoint dir or Hugging Face Hub id (ORG/NAME, fetched into "
                                     "the Hugging Face cache), or an existing artifact with --engine trt")
    p.add_argument("--revision", default=None,
                   help="with a Hub id: the branch, tag or commit to download (default: main)")
    p.add_argument("-o", "--output", default=None,
                   help="artifact directory (default: MODEL_DIR-sdar_rt-DTYPE)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fp16", action="store_true", help="float16 weights/activations/KV (logits fp32)")
    g.add_argument("--bf16", action="store_true",
                   help="bfloat16 weights/KV (logits fp32); runs on TensorRT only (ONNX Runtime and the CPU "
                        "engine: float32, the default, or --fp16)")
    p.add_argument("--block-length", type=int, default=None,
                   help="tokens decoded together per block, fixed in the graphs: the block length the "
                        "model was trained with (default: config.json's block_size, else "
                        f"{DEFAULT_BLOCK_LENGTH})")
    p.add_argument("--max-context", type=int, default=None,
                   help="prompt + output tokens the KV cache holds, a multiple of the block length "
                        "(default: min(4096, max_position_embeddings))")
    p.add_argument("--batch", type=int, default=1,
                   help="rows per forward, fixed in the graphs: prompts decoded together, or samples of "
                        "one prompt (num_samples); default 1")
    p.add_argument("--engine", choices=["onnx", "trt"], default="onnx",
                   help="onnx (default): ONNX graphs, run by ONNX Runtime anywhere; trt: also build "
                        "TensorRT plans (needs TensorRT and a GPU; run it on the target device)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset of the graphs (default 18; 17 or newer)")
    p.add_argument("--prefill-chunk", type=int, default=None,
                   help="largest prefill chunk in tokens (multiple of block length; default 256)")
    p.add_argument("--workspace-mb", type=int, default=2048, help="TensorRT builder workspace limit")
    p.add_argument("--skip-validate", action="store_true",
                   help="do not compare the graphs with PyTorch on ONNX Runtime (faster; an exporter "
                        "error then goes unnoticed)")
    p.add_argument("--tolerance", type=float, nargs=2, metavar=("ATOL", "RTOL"), default=None,
                   help="validation tolerance: max|ort - torch| <= ATOL + RTOL * max|torch| "
                        "(default per dtype, see sdar_export.validate)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output directory")
    p.add_argument("--no-cpu-engine", dest="cpu_engine", action="store_false",
                   help="leave out the native CPU engine's weight file (written by default for dense "
                        "float32 / --int4 / --int8 exports)")
    q = p.add_argument_group("weight-only quantization (sdar_export.quantize)")
    qb = q.add_mutually_exclusive_group()
    qb.add_argument("--int4", action="store_true", help="4-bit weights, groups of --group-size (default 128)")
    qb.add_argument("--int8", action="store_true", help="8-bit weights, per output channel by default")
    q.add_argument("--group-size", type=int, default=None,
                   help="input channels per scale (power of two >= 16; must divide every hidden dim)")
    qs = q.add_mutually_exclusive_group()
    qs.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                    help="zero point 0 (default; the only form TensorRT 10.3 runs)")
    qs.add_argument("--asymmetric", dest="symmetric", action="store_false", help="per-group zero points")
    q.add_argument("--quant-format", choices=["MatMulNBits", "QDQ"], default=None,
                   help="graph form: MatMulNBits (ONNX Runtime, default) or QDQ (opset-21 "
                        "DequantizeLinear -> MatMul, for TensorRT; default with --engine trt)")
    q.add_argument("--quantize-embeddings", action="store_true", help="also quantize the embedding table")
    q.add_argument("--quantize-lm-head", action="store_true", help="also quantize the LM head")
    q.add_argument("--lm-head-bits", type=int, default=None, choices=[4, 8],
                   help="quantize the LM head with these bits (implies --quantize-lm-head; e.g. an 8-bit "
                        "head for --int4)")
    q.add_argument("--accuracy-level", type=int, default=None, choices=[0, 1, 2, 3, 4],
                   help="MatMulNBits accuracy_level (default 4: int8 activations, the fast CPU kernel)")
    q.add_argument("--awq", action="store_true",
                   help="activation-aware weight scaling before rounding, calibrated through the float "
                        "network (sdar_export.awq)")
    q.add_argument("--calibration", default=None, metavar="FILE",
                   help="AWQ calibration prompts, one per line (\\n = newline); default: a built-in set")
    p.add_argument("--report", default=None, metavar="FILE.json",
                   help="also write the export report as JSON: each stage's time and peak memory, the "
                        "files and their sizes, the validation errors")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", "--quiet", action="store_true", help="print only the artifact path")
    out.add_argument("-v", "--verbose", action="store_true",
                     help="also print every output's validation error (default: the worst per graph)")
    return p


def options_from_args(a: argparse.Namespace) -> ExportOptions:
    """The export's options, a Hub id resolved into its downloaded snapshot (after the options' own
    checks, so a bad option fails before anything is downloaded). A Hub checkpoint's artifact goes to
    the current directory by default, not next to the snapshot inside the Hugging Face cache."""
    block_length = a.block_length
    if block_length is None:  # checked with the default now, set from the checkpoint's config below
        a.block_length = DEFAULT_BLOCK_LENGTH
    opts = ExportOptions.from_args(a)
    if not is_hub_id(a.model_dir):
        if a.revision is not None:
            raise CheckpointError(f"--revision applies to a Hugging Face Hub id (ORG/NAME); {a.model_dir} is "
                                  "a local path")
    else:
        named = dataclasses.replace(opts, model_dir=Path(a.model_dir.split("/")[1]))
        out = opts.out_dir or named.output_dir()
        dataclasses.replace(opts, out_dir=out).checked_output_dir()  # exists: fails before downloading
        opts = dataclasses.replace(opts, model_dir=resolve_checkpoint(a.model_dir, a.revision), out_dir=out)
    if block_length is None:
        trained = trained_block_length(opts.model_dir) or DEFAULT_BLOCK_LENGTH
        opts = dataclasses.replace(opts, block_length=trained)
    return opts


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        out = run_export(options_from_args(a)).path
    except (CheckpointError, ExportError) as e:
        print(f"sdar-export: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdar-export: interrupted; no artifact was written.", file=sys.stderr)
        return 130
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
