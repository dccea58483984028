"""The ``ort-genai`` baseline: onnxruntime-genai's own autoregressive generator on the same weights.

The SDAR checkpoint is Qwen3-shaped, so onnxruntime-genai's model builder exports it as a Qwen3 model
(from a view of the checkpoint whose config.json says ``qwen3``; the weight files are symlinked),
into the artifact cache. At float32 the builder's ``-p fp32``; against a quantized sdar_rt artifact
the builder's own ``-p int4`` with the artifact's scheme (group size, symmetry, accuracy level, and
the same LM head and embedding formats), so both sides run the same weight format built by their
own tools. Greedy, token ids in and out (no tokenizer), the stop ids are the checkpoint's EOS ids,
as for sdar_rt. SDAR predicts a masked position's token from that position's logits while a causal
LM predicts from the previous position's, so the tokens are not expected to equal sdar_rt's: this
baseline is a cost peer (one forward per generated token).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .qwen3_view import qwen3_view

INSTALL = 'pip install "sdar_rt[bench]"  (onnxruntime-genai, onnx-ir, onnxscript)'
BUILDER_BLOCK_SIZES = (16, 32, 64, 128, 256)


def missing_reason() -> str | None:
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return f"onnxruntime-genai is not installed: {INSTALL}"
    return None


def builder_options(quantization: dict | None) -> tuple[str, list[str]]:
    """The builder's precision and ``--extra_options`` matching an sdar_rt artifact's quantization
    (its manifest's section; None for float weights)."""
    if not quantization:
        return "fp32", []
    if quantization.get("weights") != "int4" or quantization.get("format") != "MatMulNBits":
        raise ValueError(
            f"the ort-genai baseline builds int4 MatMulNBits models; this artifact's weights are "
            f"{quantization.get('weights')} in {quantization.get('format')} form"
        )
    group = quantization["group_size"]
    if group not in BUILDER_BLOCK_SIZES:
        raise ValueError(
            f"onnxruntime-genai's builder takes group sizes {BUILDER_BLOCK_SIZES}, not {group}; "
            "export the int4 artifact with one of them (--group-size)"
        )
    opts = [
        f"block_size={group}",
        f"accuracy_level={quantization.get('accuracy_level') or 0}",
        f"is_symmetric={'true' if quantization.get('symmetric', True) else 'false'}",
    ]
    head = quantization.get("lm_head")
    if head == "int8":
        opts.append("matmul_mixed_precision=last_matmul:int8")
    elif head != "int4":  # the float dtype: keep the builder's LM head out of the quantization too
        opts.append("nodes_to_exclude=/lm_head/MatMul")
    if quantization.get("embeddings") == "int4":
        opts.append("op_types_to_quantize=MatMul/Gather")
    elif head in ("int4", "int8"):
        # with tied embeddings the builder would otherwise read the embedding rows from the quantized
        # head; sdar_rt keeps them in float
        opts.append("shared_embeddings=false")
    return "int4", opts


def model_tag(quantization: dict | None) -> str:
    """Part of the cached model's name: every builder option that changes the weights."""
    precision, opts = builder_options(quantization)
    return "-".join([precision] + [o.replace("/", "_").replace("=", "") for o in opts])


def build(model_dir: Path, out: Path, quantization: dict | None = None, log=print) -> Path:
    """Exports ``model_dir`` with onnxruntime-genai's builder (CPU) into ``out`` (kept: a later call
    with the same ``out`` reuses it)."""
    if (out / "genai_config.json").is_file():
        return out
    precision, extra = builder_options(quantization)
    out.parent.mkdir(parents=True, exist_ok=True)
    log(f"building the onnxruntime-genai model ({precision}{', ' + ' '.join(extra) if extra else ''})")
    with tempfile.TemporaryDirectory(prefix="sdar-bench-oga-", dir=out.parent) as tmp:
        tmp = Path(tmp)
        view = qwen3_view(model_dir, tmp, "ort-genai")
        cmd = [
            sys.executable,
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(view),
            "-o",
            str(tmp / "model"),
            "-p",
            precision,
            "-e",
            "cpu",
            "-c",
            str(tmp / "cache"),
        ]
        if extra:
            cmd += ["--extra_options", *extra]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not (tmp / "model" / "genai_config.json").is_file():
            tail = (proc.stdout + proc.stderr)[-2000:]
            raise RuntimeError(f"onnxruntime-genai's builder failed (exit {proc.returncode}):\n{tail}")
        shutil.move(str(tmp / "model"), str(out))
    return out


class OrtGenaiRunner:
    """Greedy AR generation with onnxruntime-genai, timed per token."""

    def __init__(self, model_path: Path, threads: int | None = None):
        import onnxruntime_genai as og

        self.og = og
        cfg_path = Path(model_path) / "genai_config.json"
        cfg = json.loads(cfg_path.read_text())
        options = cfg["model"]["decoder"].setdefault("session_options", {})
        if threads:
            options["intra_op_num_threads"] = threads
        else:
            options.pop("intra_op_num_threads", None)
        cfg_path.write_text(json.dumps(cfg, indent=4))
        self.model = og.Model(str(model_path))
        self.eos = set(cfg["model"].get("eos_token_id") or [])
        self.threads = threads

    def prefill_seconds(self, prompt: list[int]) -> float:
        """Seconds to take in ``prompt`` (``append_tokens``: one forward over all its tokens)."""
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + 1, do_sample=False)
        gen = og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(prompt)
        seconds = time.perf_counter() - t0
        del gen
        return seconds

    def generate(self, prompt: list[int], *, max_new_tokens: int) -> dict:
        og = self.og
        t0 = time.perf_counter()
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=len(prompt) + max_new_tokens, do_sample=False)
        gen = og.Generator(self.model, params)
        gen.append_tokens(prompt)
        tokens: list[int] = []
        stamps: list[float] = []
        while not gen.is_done() and len(tokens) < max_new_tokens:
            gen.generate_next_token()
            tokens.append(int(gen.get_next_tokens()[0]))
            stamps.append(time.perf_counter())
        seconds = time.perf_counter() - t0
        del gen
        out = tokens
        for i, t in enumerate(tokens):
            if t in self.eos:
                out = tokens[:i]
                break
        steps = [b - a for a, b in zip([t0] + stamps[:-1], stamps, strict=True)]
        return {
            "token_ids": out,
            "tokens_generated": len(out),
            "seconds": seconds,
            "time_to_first_block": steps[0] if steps else seconds,
            "block_seconds": steps[1:],
            "forwards": len(tokens),
            # after the first token, whose step also ran the prompt's prefill: one forward per token
            "decode_seconds": sum(steps[1:]),
            "decode_tokens": len(steps) - 1 if steps else 0,
        }
