"""The user-facing Generator: artifact + tokenizer + engine around the C++ generation core."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _core
from .artifact import Artifact, load_artifact
from .incremental_text import IncrementalText, first_stop
from .tokenizer import Tokenizer

REMASKING_POLICIES = ("sequential", "low_confidence_static", "low_confidence_dynamic")
DEFAULT_PREFILL_CHUNK = 512


@dataclass
class GenerationOutput:
    """One generated sequence: text, token ids (stop token excluded), why it ended, call stats."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    stats: dict = field(default_factory=dict)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Generator:
    """Loads an artifact directory and generates text with the SDAR decoding rules.

    ``engine``: "auto" (TensorRT when built and the artifact has TensorRT engines; else on the host
    the native CPU engine when the artifact has its weights; else ONNX Runtime), "cpu", "ort",
    "trt", or a ``sdar_rt._core.Engine`` instance.
    ``device``: "cpu", "cuda" or None (TensorRT: "cuda"; otherwise "cpu"). With TensorRT (and
    with a custom engine and device="cuda") the whole decoding loop runs on the GPU: KV cache and
    logits in device memory, unmasking by CUDA kernels, one 4-byte host read per denoising step.
    With ONNX Runtime the loop stays on the host and device="cuda" selects ONNX Runtime's CUDA
    provider (onnxruntime-gpu).
    ``threads``: the engine's threads (ONNX Runtime's intra-op threads; the CPU engine's pool).
    None: ONNX Runtime's default; for the CPU engine the physical cores this process may use.
    """

    def __init__(
        self,
        artifact_dir: str | Path,
        engine: Any = "auto",
        device: str | None = None,
        threads: int | None = None,
        prefill_chunk: int | None = None,
    ):
        self.artifact: Artifact = load_artifact(artifact_dir)
        a = self.artifact
        self.tokenizer = Tokenizer(a.path, mask_id=a.mask_id)
        self.engine, self.device = self._make_engine(engine, device, threads)
        L = a.block_length
        chunk = prefill_chunk or a.manifest.get("prefill_chunk") or DEFAULT_PREFILL_CHUNK
        if not _is_int(chunk) or chunk < 1:
            raise ValueError(f"prefill_chunk must be a positive integer, got {chunk!r}")
        chunk = max(L, min(chunk, a.max_context) // L * L)
        model = a.model
        self.spec = _core.ModelSpec(
            num_layers=model["num_layers"],
            num_kv_heads=model["num_kv_heads"],
            head_dim=model["head_dim"],
            vocab_size=model["vocab_size"],
            block_length=L,
            max_context=a.max_context,
            batch=a.batch,
            kv_dtype=a.dtype,
            mask_id=a.mask_id,
            eos_ids=a.eos_ids,
            prefill_chunk=chunk,
        )
        self._core = _core.Generator(self.spec, self.engine, device=self.device)
        self.last_output: GenerationOutput | list[GenerationOutput] | None = None

    def _make_engine(self, engine: Any, device: str | None, threads: int | None) -> tuple[Any, str]:
        """(engine, where the decoding loop runs: "cpu" | "cuda")."""
        if device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if isinstance(engine, _core.Engine):
            return engine, device or "cpu"  # a custom engine gets the buffers of the device asked for
        if engine not in ("auto", "ort", "trt", "cpu"):
            raise ValueError(
                f"engine must be 'auto', 'ort', 'trt', 'cpu' or an Engine instance, got {engine!r}"
            )
        from .trt_engine import make_trt_engine, tensorrt_available, trt_plans

        # auto: TensorRT when this build has it and the artifact carries plans for it
        auto_trt = (engine == "auto" and device != "cpu" and tensorrt_available()
                    and bool(trt_plans(self.artifact)))
        if engine == "trt" or auto_trt:
            if device == "cpu":
                raise ValueError("engine='trt' runs on the GPU: use device='cuda' (or leave device unset)")
            return make_trt_engine(self.artifact), "cuda"
        from .cpu_engine import make_cpu_engine, unavailable_reason

        # then, on the host, the native CPU engine when the artifact has its weights
        auto_cpu = engine == "auto" and device != "cuda" and unavailable_reason(self.artifact) is None
        if engine == "cpu" or auto_cpu:
            if device == "cuda":
                raise ValueError("engine='cpu' runs on the host: use device='cpu' (or leave device unset)")
            return make_cpu_engine(self.artifact, threads=threads), "cpu"
        from .ort_engine import OrtEngine

        # ONNX Runtime binds host buffers; device='cuda' selects its CUDA provider (onnxruntime-gpu).
        return OrtEngine(self.artifact, device=device or "cpu", threads=threads), "cpu"

    # ------------------------------------------------------------------ public API
    def generate(
        self,
        prompt: str | list[dict] | list[str] | None = None,
        *,
        prompt_ids=None,
        max_new_tokens: int = 128,
        denoising_steps: int | None = None,
        remasking: str = "low_confidence_dynamic",
        threshold: float = 0.9,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop=None,
        num_samples: int = 1,
        chat: bool | None = None,
        fused_commit: bool = True,
        on_text: Callable[[int, str], Any] | None = None,
    ):
        """Generates for one prompt (returns a GenerationOutput) or a batch (returns a list).

        ``prompt``: a string, a chat message list ([{"role": ..., "content": ...}]) or a list of strings;
        or ``prompt_ids``: token ids (a list of ints, or a list of lists). ``stop``: extra stop strings
        and/or token ids. ``on_text(row, text_delta)`` is called after every finished block.
        """
        rows, single = self._prompt_rows(prompt, prompt_ids, chat, num_samples)
        config = self._config(
            max_new_tokens,
            denoising_steps,
            remasking,
            threshold,
            temperature,
            top_k,
            top_p,
            seed,
            fused_commit,
        )
        stop_ids, stop_strings = self._stop(stop)
        config.stop_ids = stop_ids
        outputs = self._run(rows, config, stop_strings, on_text, cancel=None)
        result = outputs[0] if single else outputs
        self.last_output = result
        return result

    def generate_ids(self, prompt_ids: Sequence[Sequence[int]], **kwargs) -> list[GenerationOutput]:
        """Batch generation from token ids (for callers with their own tokenizer)."""
        if not isinstance(prompt_ids, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) for p in prompt_ids
        ):
            raise ValueError("generate_ids expects a list of token-id lists")
        out = self.generate(prompt_ids=[list(p) for p in prompt_ids], **kwargs)
        return out if isinstance(out, list) else [out]

    def stream(self, prompt: str | list[dict] | None = None, **kwargs) -> Iterator[str]:
        """Yields text per finished block for one prompt. Closing the iterator cancels the generation.
        The final GenerationOutput is left in ``self.last_output``."""
        if kwargs.get("num_samples", 1) != 1:
            raise ValueError("stream() generates one sequence; use generate() for num_samples > 1")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            raise ValueError("stream() takes one prompt; use generate() for a batch")
        if "on_text" in kwargs:
            raise ValueError("stream() does not take on_text")
        chunks: queue.Queue = queue.Queue()
        cancel = threading.Event()

        def on_text(row: int, delta: str) -> None:
            if delta:
                chunks.put(("text", delta))

        def worker() -> None:
            try:
                rows, _ = self._prompt_rows(
                    prompt, kwargs.pop("prompt_ids", None), kwargs.pop("chat", None), 1
                )
                stop_ids, stop_strings = self._stop(kwargs.pop("stop", None))
                config = self._config(**{k: v for k, v in kwargs.items() if k != "num_samples"})
                config.stop_ids = stop_ids
                out = self._run(rows, config, stop_strings, on_text, cancel)[0]
                self.last_output = out
                chunks.put(("done", out))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                chunks.put(("error", exc))

        thread = threading.Thread(target=worker, name="sdar-stream", daemon=True)
        thread.start()
        try:
            while True:
                kind, value = chunks.get()
                if kind == "text":
                    yield value
                elif kind == "done":
                    return
                else:
                    raise value
        finally:
            cancel.set()
            thread.join()

    # ------------------------------------------------------------------ helpers
    def _encode_prompt(self, prompt: str | list[dict], chat: bool | None) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str):
            use_chat = tok.chat_template is not None if chat is None else chat
            text = tok.apply_chat_template([{"role": "user", "content": prompt}]) if use_chat else prompt
        else:
            if chat is False:
                raise ValueError(
                    "a message list needs the chat template; pass a string with chat=False instead"
                )
            if not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
                raise ValueError("chat messages must be dicts with 'role' and 'content'")
            text = tok.apply_chat_template(list(prompt))
        ids = tok.encode(text)
        if not ids:
            raise ValueError("the prompt encodes to zero tokens")
        return ids

    def _prompt_rows(self, prompt, prompt_ids, chat, num_samples) -> tuple[list[list[int]], bool]:
        if not _is_int(num_samples) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        if (prompt is None) == (prompt_ids is None):
            raise ValueError("pass exactly one of prompt or prompt_ids")
        if prompt is not None:
            if (
                isinstance(prompt, str)
                or isinstance(prompt, list)
                and prompt
                and all(isinstance(p, dict) for p in prompt)
            ):
                prompts, single = [self._encode_prompt(prompt, chat)], True
            elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
                prompts, single = [self._encode_prompt(p, chat) for p in prompt], False
            else:
                raise ValueError(
                    "prompt must be a string, a list of chat messages or a non-empty list of strings"
                )
        else:
            if isinstance(prompt_ids, (list, tuple)) and prompt_ids and all(_is_int(t) for t in prompt_ids):
                prompts, single = [list(prompt_ids)], True
            elif (
                isinstance(prompt_ids, (list, tuple))
                and prompt_ids
                and all(isinstance(p, (list, tuple)) and all(_is_int(t) for t in p) for p in prompt_ids)
            ):
                prompts, single = [list(p) for p in prompt_ids], False
            else:
                raise ValueError("prompt_ids must be a non-empty list of token ids or a list of such lists")
        vocab = self.spec.vocab_size
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            bad = [t for t in p if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt {i} has token ids outside [0, {vocab}): {bad[:5]}")
        rows = [p for p in prompts for _ in range(num_samples)]
        return rows, single and num_samples == 1

    def _config(
        self,
        max_new_tokens=128,
        denoising_steps=None,
        remasking="low_confidence_dynamic",
        threshold=0.9,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        seed=0,
        fused_commit=True,
    ) -> _core.GenerationConfig:
        if not _is_int(max_new_tokens) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        L = self.spec.block_length
        steps = L if denoising_steps is None else denoising_steps
        if not _is_int(steps) or not 1 <= steps <= L:
            raise ValueError(
                f"denoising_steps must be an integer in [1, block_length={L}], got {denoising_steps!r}"
            )
        if remasking not in REMASKING_POLICIES:
            raise ValueError(f"remasking must be one of {REMASKING_POLICIES}, got {remasking!r}")
        for name, value in (("threshold", threshold), ("temperature", temperature), ("top_p", top_p)):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
        if not temperature >= 0.0 or temperature == float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
        if not _is_int(top_k) or top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0, got {top_k!r}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if not _is_int(seed) or not 0 <= seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        return _core.GenerationConfig(
            max_new_tokens=max_new_tokens,
            denoising_steps=steps,
            remasking=remasking,
            threshold=float(threshold),
            temperature=float(temperature),
            top_k=top_k,
            top_p=float(top_p),
            seed=seed,
            fused_commit=bool(fused_commit),
        )

    def _stop(self, stop) -> tuple[list[int], list[str]]:
        if stop is None:
            return [], []
        items = [stop] if isinstance(stop, (str, int)) else list(stop)
        ids: list[int] = []
        strings: list[str] = []
        vocab = self.spec.vocab_size
        for item in items:
            if _is_int(item):
                if not 0 <= item < vocab:
                    raise ValueError(f"stop id {item} is outside [0, {vocab})")
                ids.append(item)
            elif isinstance(item, str) and item:
                special = self.tokenizer.special_token_id(item)  # e.g. "<|im_end|>": stop on the id
                if special is not None:
                    ids.append(special)
                else:
                    strings.append(item)
            else:
                raise ValueError(f"stop entries must be non-empty strings or token ids, got {item!r}")
        return ids, strings

    def _run(
        self, rows: list[list[int]], config, stop_strings: list[str], on_text, cancel
    ) -> list[GenerationOutput]:
        """Groups rows by length into calls of at most `batch` prompts and runs them."""
        outputs: list[GenerationOutput | None] = [None] * len(rows)
        by_length: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_length.setdefault(len(r), []).append(i)
        B = self.spec.batch
        for indices in by_length.values():
            for start in range(0, len(indices), B):
                group = indices[start : start + B]
                config.row_ids = group  # Philox row word = the row's index in the request
                for i, out in zip(
                    group,
                    self._call([rows[i] for i in group], group, config, stop_strings, on_text, cancel),
                    strict=True,
                ):
                    outputs[i] = out
                if cancel is not None and cancel.is_set():
                    break
        return [o if o is not None else GenerationOutput("", [], "cancelled", {}) for o in outputs]

    def _call(self, prompts, row_indices, config, stop_strings, on_text, cancel) -> list[GenerationOutput]:
        tok = self.tokenizer
        n = len(prompts[0])
        L = self.spec.block_length
        m = config.max_new_tokens
        texts = [IncrementalText(tok) for _ in prompts]  # O(block) decoding per block, not O(row)
        emitted = [""] * len(prompts)  # text already handed to on_text
        ended = [False] * len(prompts)  # finished in the core or by a stop string
        string_stop = [False] * len(prompts)
        # While a row runs, its last (longest stop - 1) characters may be the start of a stop
        # string: they are held back so streamed text never shows part of a stop string.
        hold = max((len(s) for s in stop_strings), default=1) - 1

        def on_block(block: int, block_tokens) -> bool:
            expected = L - n % L if block == 0 else L
            for r, new in enumerate(block_tokens):
                if ended[r]:
                    continue
                t = texts[r]
                remaining = m - len(t.ids)
                before = len(t.text)
                t.extend(new)
                if len(new) < min(expected, remaining) or len(t.ids) >= m:
                    ended[r] = True  # stop id or length reached in the core
                    t.finish()
                cut = first_stop(t.text, stop_strings, before) if stop_strings else None
                if cut is not None:
                    string_stop[r] = ended[r] = True
                visible = t.text if cut is None else t.text[:cut]  # text up to the first stop string
                ready = visible if ended[r] else visible[: len(visible) - hold]
                if on_text is not None and len(ready) > len(emitted[r]):
                    on_text(row_indices[r], ready[len(emitted[r]) :])
                    emitted[r] = ready
            if cancel is not None and cancel.is_set():
                return False
            return not (stop_strings and all(ended))

        need_callback = on_text is not None or bool(stop_strings) or cancel is not None
        result = self._core.generate(prompts, config, on_block if need_callback else None)
        stats = result.stats.to_dict()
        stats["engine"] = type(self.engine).__name__
        outs = []
        for r, row in enumerate(result.rows):
            ids = list(row.tokens)
            text = tok.decode(ids)
            reason = row.finish_reason
            cut = first_stop(text, stop_strings) if stop_strings else None
            if cut is not None:
                text, reason = text[:cut], "stop"
            if reason == "cancelled" and string_stop[r]:
                reason = "stop"
            if on_text is not None and text.startswith(emitted[r]) and len(text) > len(emitted[r]):
                on_text(row_indices[r], text[len(emitted[r]) :])  # what was held back
            outs.append(GenerationOutput(text, ids, reason, stats))
        return outs
