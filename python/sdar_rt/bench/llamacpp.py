"""The ``llama.cpp`` baseline: the checkpoint's weights converted to GGUF by llama.cpp's own converter,
quantized by ``llama-quantize`` and timed by ``llama-bench`` (tools: ``llamacpp_tools``).

Weight formats, matched to the sdar_rt artifact compared: float32 -> F32 (float16 -> F16); int4 ->
Q4_0 with every matrix Q4_0 (``--pure``; blocks of 32, llama.cpp's only symmetric 4-bit format), its
output layer (the LM head) and token embeddings in the artifact's LM head format (Q4_0, Q8_0 or
float); int8 -> Q8_0 alike. The GGUF files are cached next to the tools, named after the checkpoint's
content key and the llama.cpp version.

``llama-bench`` times generation (``tg``: ``-n`` tokens one forward each, after ``-d`` tokens of
context that are not timed) and prompt processing (``pp``: ``-p`` tokens in one batch), repeating
each test ``-r`` times after its own warm-up run; every repetition is one sample of the JSON it prints.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..artifact_cache import checkpoint_key
from .llamacpp_tools import LlamaCppUnavailable, Tools, home
from .qwen3_view import qwen3_view

FLOAT_TYPES = {"float32": "f32", "float16": "f16"}
HEAD_TYPES = {"int4": "q4_0", "int8": "q8_0"}


def gguf_type(dtype: str, quantization: dict | None) -> tuple[str, list[str]]:
    """llama-quantize's type and options for an sdar_rt artifact's weights (dtype and its manifest's
    quantization section); ("f32"/"f16", []) for float weights, which the converter writes itself."""
    if not quantization:
        if dtype not in FLOAT_TYPES:
            raise ValueError(f"the llama.cpp baseline has no GGUF type for {dtype} weights")
        return FLOAT_TYPES[dtype], []
    weights = quantization.get("weights")
    if weights not in HEAD_TYPES:
        raise ValueError(f"the llama.cpp baseline has no GGUF type for {weights} weights")
    head = HEAD_TYPES.get(quantization.get("lm_head"), FLOAT_TYPES.get(dtype, "f32"))
    return HEAD_TYPES[weights], ["--pure", "--output-tensor-type", head, "--token-embedding-type", head]


def model_tag(dtype: str, quantization: dict | None) -> str:
    qtype, opts = gguf_type(dtype, quantization)
    head = opts[opts.index("--output-tensor-type") + 1] if opts else None
    return qtype + (f"-pure-head-{head}" if head else "")


def _run(cmd: list[str], what: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    except OSError as exc:
        raise LlamaCppUnavailable(f"{what}: {exc}") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-6:])
        said = f": {tail}" if tail else ""
        raise LlamaCppUnavailable(f"{what} failed ({_exit_reason(proc.returncode)}){said}")
    return proc.stdout


def _exit_reason(returncode: int) -> str:
    """A tool's exit status in words; a signal is named, and an illegal instruction explained."""
    if returncode >= 0:
        return f"exit {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if -returncode == signal.SIGILL:
        return (f"killed by {name}: it ran an instruction this CPU or system does not allow; "
                "--llama-cpp-isa avx2 builds llama.cpp for fewer instructions")
    return f"killed by {name}"


def gguf(
    tools: Tools, model_dir: Path, dtype: str, quantization: dict | None, log: Callable[[str], None]
) -> Path:
    """The checkpoint in the GGUF format matching the artifact's weights, made once."""
    qtype, opts = gguf_type(dtype, quantization)
    folder = home() / "gguf" / f"{model_dir.name}-{checkpoint_key(model_dir)}-{tools.version}"
    out = folder / f"{model_tag(dtype, quantization)}.gguf"
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    source_type = "f16" if dtype == "float16" else "f32"
    converted = folder / f"{source_type}.gguf"
    if not converted.is_file():
        log(f"converting {model_dir.name} to GGUF ({source_type}) with llama.cpp's convert_hf_to_gguf.py")
        with tempfile.TemporaryDirectory(prefix="sdar-bench-gguf-", dir=folder) as tmp:
            view = qwen3_view(model_dir, Path(tmp), "llama.cpp")
            partial = Path(tmp) / converted.name
            _run(
                [*tools.converter_command(), str(view), "--outtype", source_type, "--outfile", str(partial)],
                "llama.cpp's converter",
            )
            shutil.move(str(partial), str(converted))
    if out == converted:
        return out
    log(f"quantizing to {qtype.upper()} with llama-quantize {' '.join(opts)}")
    partial = out.with_suffix(".partial")
    _run([str(tools.quantize), *opts, str(converted), str(partial), qtype.upper()], "llama-quantize")
    partial.rename(out)
    return out


def bench(
    tools: Tools, model: Path, *, threads: int, reps: int, n_gen: int = 0, n_prompt: int = 0, depth: int = 0
) -> list[float]:
    """Seconds of each of ``reps`` repetitions of one llama-bench test: ``tg`` (``n_gen`` tokens after
    ``depth`` untimed ones) or ``pp`` (``n_prompt`` tokens)."""
    if (n_gen > 0) == (n_prompt > 0):
        raise ValueError("one llama-bench test at a time: n_gen or n_prompt")
    cmd = [
        str(tools.bench),
        "-m",
        str(model),
        "-t",
        str(threads),
        "-r",
        str(reps),
        "-o",
        "json",
        "-p",
        str(n_prompt),
        "-n",
        str(n_gen),
        "-d",
        str(depth),
    ]
    out = _run(cmd, "llama-bench")
    try:
        tests = json.loads(out)
        samples = tests[0]["samples_ns"]
    except (ValueError, LookupError, TypeError) as exc:
        raise LlamaCppUnavailable(f"llama-bench printed no result ({exc}): {out[-300:]!r}") from exc
    if len(samples) != reps:
        raise LlamaCppUnavailable(f"llama-bench gave {len(samples)} samples, not the {reps} asked for")
    return [s / 1e9 for s in samples]
