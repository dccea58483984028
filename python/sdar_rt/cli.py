"""Command-line entry points: ``sdar-generate`` and ``sdar-demo``."""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .artifact import ArtifactError, load_artifact
from .artifact_cache import ExportOptions, artifact_path, cache_root, export_cached, trained_block_length
from .extras import missing_extra
from .generator import REMASKING_POLICIES

PACKAGED_CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "tiny"
PACKAGED_PROMPT = "sort: 5 9 1 3 3 8 0 2"  # the packaged model's task (see its README.md)
CACHE_DIR = cache_root()


# What the demo calls each engine class when it says which one runs.
_ENGINE_LABELS = {"CpuEngine": "native CPU", "OrtEngine": "ONNX Runtime", "TrtEngine": "TensorRT"}


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def reported(prog: str, work: Callable[[], int], needing: str | None = None) -> int:
    """Runs a command's ``work`` and returns its exit status, saying what stopped it in one line:
    bad input or a failure (an artifact, a value, the runtime) as ``PROG: error: ...`` (status 2),
    Ctrl-C as ``PROG: interrupted`` (130). ``needing``: what the command does that an optional
    extra serves, so that the extra's missing import is named in one line too (else re-raised)."""
    try:
        return work()
    except ImportError as exc:
        error = missing_extra(exc, needing) if needing else None
        if error is None:
            raise
        _err(f"{prog}: error: {error}")
        return 2
    except (ArtifactError, ValueError, RuntimeError) as exc:
        _err(f"{prog}: error: {exc}")
        return 2
    except KeyboardInterrupt:
        _err(f"\n{prog}: interrupted")
        return 130


@contextlib.contextmanager
def _first_ctrl_c_only() -> Iterator[None]:
    """The first Ctrl-C raises KeyboardInterrupt; later ones are ignored until the process exits,
    so a second press cannot cut short the clean-up (the decoding thread stops within one forward)
    or turn the exit status 130 into a traceback. A SIGINT the shell set to be ignored stays so."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def first(signum, frame) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is first:  # no Ctrl-C: back to Python's handler
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _add_decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--steps", type=int, default=None, help="denoising steps per block (default: block length)"
    )
    p.add_argument(
        "--remasking",
        default="low_confidence_dynamic",
        choices=list(REMASKING_POLICIES),
    )
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--eb-threshold", type=float, default=0.35,
                   help="entropy_bounded: entropy budget per step in nats (larger unmasks more per step)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=None, help="extra stop string (repeatable)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--no-fused", action="store_true", help="commit blocks with a separate pass")
    add_engine_args(p)


ENGINES = ("auto", "cpu", "ort", "trt")  # what Generator(engine=...) accepts


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """--engine, --device and --threads, as every command that runs an artifact takes them."""
    p.add_argument("--engine", default="auto", choices=list(ENGINES),
                   help="auto (default): TensorRT when built and the artifact has its plans, else the "
                        "native CPU engine when the artifact has its weights, else ONNX Runtime; cpu: the "
                        "native CPU engine; ort: ONNX Runtime; trt: TensorRT")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"],
                   help="default: cuda for TensorRT, cpu otherwise")
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the engine that runs: the native CPU engine's pool (default: the "
                        "physical cores this process may use) or ONNX Runtime's intra-op threads (default: "
                        "its own choice); TensorRT runs on the GPU and takes none")


def _decoding_kwargs(a: argparse.Namespace) -> dict:
    return dict(
        max_new_tokens=a.max_new_tokens,
        denoising_steps=a.steps,
        remasking=a.remasking,
        threshold=a.threshold,
        eb_threshold=a.eb_threshold,
        temperature=a.temperature,
        top_k=a.top_k,
        top_p=a.top_p,
        seed=a.seed,
        stop=a.stop,
        chat=False if a.no_chat else None,
        fused_commit=not a.no_fused,
    )


def _print_stats(stats: dict, finish_reason: str) -> None:
    _err(
        f"\n[{finish_reason}] {stats.get('tokens_generated', 0)} tokens, NFE {stats.get('nfe', 0)} "
        f"(prefill {stats.get('nfe_prefill', 0)}, denoise {stats.get('nfe_denoise', 0)}, "
        f"commit {stats.get('nfe_commit', 0)}, fused {stats.get('nfe_fused', 0)}), "
        f"TPF {stats.get('tpf', 0.0):.2f}, prefill {stats.get('prefill_seconds', 0.0) * 1e3:.1f} ms, "
        f"first block {stats.get('time_to_first_block', 0.0) * 1e3:.1f} ms, "
        f"total {stats.get('total_seconds', 0.0):.3f} s"
    )


def _stream(gen, prompt: str | list[dict], kwargs: dict, as_json: bool = False) -> int:
    # Closed on every way out (Ctrl-C while writing included): the decoding thread stops and is
    # joined here, before the interpreter exits.
    with contextlib.closing(gen.stream(prompt, **kwargs)) as pieces:
        for piece in pieces:
            if not as_json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    out = gen.last_output
    if as_json:
        print(
            json.dumps(
                {
                    "text": out.text,
                    "token_ids": out.token_ids,
                    "finish_reason": out.finish_reason,
                    "stats": out.stats,
                }
            )
        )
    else:
        sys.stdout.write("\n")
        _print_stats(out.stats, out.finish_reason)
    return 0


def _show_unmasking(gen, prompt: str | list[dict], kwargs: dict, delay: float) -> int:
    """Draws every denoising step of the block being decoded, then prints the statistics."""
    from .unmasking_view import UnmaskingView

    with UnmaskingView(gen.tokenizer, delay=delay) as view:
        out = gen.generate(prompt, on_text=view.on_text, on_step=view.on_step, **kwargs)
    _print_stats(out.stats, out.finish_reason)
    return 0


def generate_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="sdar-generate", description="Generate text from an sdar_rt artifact.")
    p.add_argument("artifact", help="artifact directory written by sdar-export")
    p.add_argument("prompt", help="the prompt; - reads it from standard input")
    p.add_argument("--system", default=None, help="system prompt (chat template)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming")
    p.add_argument("--show-unmasking", action="store_true",
                   help="draw the block being denoised in the terminal, step by step")
    p.add_argument("--step-delay", type=float, default=0.0,
                   help="with --show-unmasking: seconds to pause after each drawn step (default 0)")
    _add_decoding_args(p)
    a = p.parse_args(argv)
    if a.show_unmasking and a.json:
        p.error("--show-unmasking draws in the terminal; it cannot be combined with --json")
    if a.step_delay < 0:
        p.error(f"--step-delay must be >= 0, got {a.step_delay}")
    if a.system is not None and a.no_chat:
        p.error("--system needs the chat template; it cannot be combined with --no-chat")

    def work() -> int:
        from .generator import Generator

        text = sys.stdin.read() if a.prompt == "-" else a.prompt
        prompt = text if a.system is None else [{"role": "system", "content": a.system},
                                                {"role": "user", "content": text}]
        gen = Generator(a.artifact, engine=a.engine, device=a.device, threads=a.threads)
        with _first_ctrl_c_only():
            if a.show_unmasking:
                return _show_unmasking(gen, prompt, _decoding_kwargs(a), a.step_delay)
            return _stream(gen, prompt, _decoding_kwargs(a), a.json)

    return reported("sdar-generate", work)


def ensure_checkpoint(model_dir: str | None, revision: str | None = None) -> Path:
    """The checkpoint dir to export: ``model_dir``, a Hugging Face Hub id's snapshot (fetched into the
    Hugging Face cache when missing), or the packaged one."""
    if model_dir:
        from sdar_export.hub import is_hub_id, resolve_checkpoint  # no torch import

        if is_hub_id(model_dir) or revision is not None:
            _err(f"[1/3] fetching {model_dir} from the Hugging Face Hub (reused from its cache when there)")
            return resolve_checkpoint(model_dir, revision, log=lambda msg: _err(f"      {msg}"))
        path = Path(model_dir).expanduser()
        if not (path / "config.json").is_file():
            raise ArtifactError(f"{path}: no config.json; pass a Hugging Face SDAR checkpoint directory")
        return path
    if (PACKAGED_CHECKPOINT / "config.json").is_file():
        _err(f"[1/3] using the packaged checkpoint {PACKAGED_CHECKPOINT}")
        return PACKAGED_CHECKPOINT
    path = CACHE_DIR / "checkpoints" / "random-tiny"
    if not (path / "config.json").is_file():
        _err(f"[1/3] creating a small random SDAR checkpoint in {path} (no trained one is packaged)")
        from sdar_export.make_checkpoint import make_checkpoint

        make_checkpoint(path, preset="tiny", seed=0, moe=False)
    else:
        _err(f"[1/3] using the cached random checkpoint {path}")
    return path


def ensure_artifact(model_dir: Path, out: str | None, fp16: bool) -> Path:
    dtype = "float16" if fp16 else "float32"
    # The cache sdar-bench shares (its default configuration), at the block length the model was trained with.
    options = ExportOptions(dtype=dtype, block_length=trained_block_length(model_dir))
    art = Path(out).expanduser() if out else artifact_path(model_dir, options)
    if (art / "manifest.json").is_file():
        try:
            load_artifact(art)
            _err(f"[2/3] reusing the artifact {art}")
            return art
        except ArtifactError as exc:
            _err(f"[2/3] the artifact {art} is unusable ({exc}); exporting again")
    _err(f"[2/3] exporting {model_dir} -> {art} ({dtype}); this takes a minute")
    t0 = time.perf_counter()
    if out:
        from sdar_export.cli import export

        export(model_dir, art, **options.export_kwargs(), force=True, quiet=False)
    else:  # replaces the cached artifacts of earlier versions of this checkpoint
        export_cached(model_dir, options)
    _err(f"      exported in {time.perf_counter() - t0:.1f} s")
    return art


def demo_main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="sdar-demo", description="Export a checkpoint (cached) and stream a generation."
    )
    p.add_argument(
        "model_dir",
        nargs="?",
        default=None,
        help="HF SDAR checkpoint dir or Hub id such as JetLM/SDAR-1.7B-Chat (default: the packaged tiny "
        "one, else a random tiny one)",
    )
    p.add_argument(
        "-o", "--output", default=None, help="artifact directory (default: cached under ~/.cache/sdar_rt)"
    )
    p.add_argument("--prompt", default=None,
                   help="default: a task prompt for the packaged checkpoint (it sorts digits)")
    p.add_argument("--fp16", action="store_true", help="export in float16")
    _add_decoding_args(p)
    p.set_defaults(max_new_tokens=64)
    a = p.parse_args(argv)

    def work() -> int:
        model_dir = ensure_checkpoint(a.model_dir)
        art = ensure_artifact(model_dir, a.output, a.fp16)
        from .generator import Generator

        gen = Generator(art, engine=a.engine, device=a.device, threads=a.threads)
        _err(
            f"[3/3] generating ({gen.artifact.model['num_layers']} layers, block length "
            f"{gen.artifact.block_length}, {_ENGINE_LABELS.get(type(gen.engine).__name__, 'custom')} engine):"
        )
        prompt = a.prompt or (PACKAGED_PROMPT if model_dir == PACKAGED_CHECKPOINT else "Once upon a time")
        _err(f"      prompt: {prompt!r}")
        with _first_ctrl_c_only():
            return _stream(gen, prompt, _decoding_kwargs(a))

    return reported("sdar-demo", work, needing="exporting a checkpoint")


if __name__ == "__main__":
    raise SystemExit(generate_main())
