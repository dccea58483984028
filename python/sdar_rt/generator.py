"""The user-facing Generator: artifact + tokenizer + engine around the C++ generation core."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _core
from .artifact import Artifact, load_artifact
from .core_calls import CoreCall, running, start_thread
from .incremental_text import IncrementalText, first_stop, tokens_of_text
from .tokenizer import Tokenizer
from .unmasking import StepRows, UnmaskingStep

if TYPE_CHECKING:
    from .conversation import Conversation

DEFAULT_PREFILL_CHUNK = 512
# The remasking policies the core knows, for choices in the CLI and the server's request schema
# (the core validates the value itself; a test keeps this list equal to what it accepts).
REMASKING_POLICIES = ("sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded")


@dataclass
class GenerationOutput:
    """One generated sequence: text, token ids (stop token excluded; cut with the text at a stop
    string), why it ended, call stats."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    stats: dict = field(default_factory=dict)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass
class _CallHooks:
    """What a call does besides decoding: see generate()'s on_step, reuse_cache, independent_rows."""

    on_step: Callable[[UnmaskingStep], Any] | None = None
    reuse_cache: bool = False
    independent_rows: bool = False
    cancel: Any = None  # the caller's event (``is_set()``), polled per block and per step


class Generator:
    """Loads an artifact directory and generates text with the SDAR decoding rules.

    ``engine``: "auto" (TensorRT when built and the artifact has TensorRT engines; else on the host
    the native CPU engine when the artifact has its weights; else ONNX Runtime), "cpu", "ort",
    "trt", or a ``sdar_rt._core.Engine`` instance.
    ``device``: "cpu", "cuda" or None (TensorRT: "cuda"; otherwise "cpu"). With TensorRT (and
    with a custom engine and device="cuda") the whole decoding loop runs on the GPU: KV cache and
    logits in device memory, unmasking by CUDA kernels, one 4-byte host read per denoising step.
    ONNX Runtime and the native CPU engine run the host loop only (device="cuda" with ONNX Runtime
    is refused: it would copy the KV cache every step).
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
        limit = getattr(self.engine, "max_prefill_tokens", None)  # TensorRT: the plan's prefill profile
        if limit:
            if prefill_chunk is not None and prefill_chunk > limit:
                raise ValueError(
                    f"prefill_chunk={prefill_chunk} exceeds the TensorRT plan's prefill profile ({limit} "
                    f"tokens per pass): use prefill_chunk <= {limit}, or rebuild the plan with `sdar-export "
                    f"{a.path} --engine trt --prefill-chunk {prefill_chunk}`"
                )
            chunk = min(chunk, limit)
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

        # ONNX Runtime binds the host loop's buffers (it refuses device='cuda')
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
        eb_threshold: float = 0.35,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int = 0,
        stop=None,
        num_samples: int = 1,
        chat: bool | None = None,
        fused_commit: bool = True,
        on_text: Callable[[int, str], Any] | None = None,
        on_step: Callable[[UnmaskingStep], Any] | None = None,
        reuse_cache: bool = False,
        cancel: Any = None,
        independent_rows: bool = False,
    ):
        """Generates for one prompt (returns a GenerationOutput) or a batch (returns a list).

        ``prompt``: a string, a chat message list ([{"role": ..., "content": ...}]) or a list of strings;
        or ``prompt_ids``: token ids (a list of ints, or a list of lists). ``stop``: extra stop strings
        and/or token ids. ``on_text(row, text_delta)`` is called after every finished block.
        ``remasking="entropy_bounded"``: each step fills the masked positions of lowest entropy while
        their summed entropy stays below ``eb_threshold`` (nats; at least one position per step).
        ``on_step(UnmaskingStep)`` is called after every denoising step with the block being denoised
        (on the GPU this costs a copy back per step, so only pass it to show it).
        ``reuse_cache``: start from the longest whole-block prefix of the prompt that the KV cache
        already holds from earlier calls (checked token by token; the tokens are those of a fresh call).
        ``cancel``: an object with ``is_set()`` (a ``threading.Event``) polled after every block (and
        every step with ``on_step``); when set, rows still running end with finish reason "cancelled".
        ``independent_rows``: sample every row of a batch as if it ran alone (the rows are separate
        requests); by default row i of a request draws its own random numbers, so ``num_samples`` differ.
        """
        rows, single = self._prompt_rows(prompt, prompt_ids, chat, num_samples)
        config = self._config(
            max_new_tokens,
            denoising_steps,
            remasking,
            threshold,
            eb_threshold,
            temperature,
            top_k,
            top_p,
            seed,
            fused_commit,
        )
        stop_ids, stop_strings = self._stop(stop)
        config.stop_ids = stop_ids
        hooks = _CallHooks(on_step, bool(reuse_cache), bool(independent_rows), cancel)
        with running(CoreCall()) as call:  # a caller's own thread is stopped at exit too
            outputs = self._run(rows, config, stop_strings, on_text, call.token, hooks)
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
        The final GenerationOutput is the iterator's return value (``out = yield from gen.stream(...)``)
        and is left in ``self.last_output``. Takes generate()'s keywords but on_text and cancel."""
        if kwargs.get("num_samples", 1) != 1:
            raise ValueError("stream() generates one sequence; use generate() for num_samples > 1")
        if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
            raise ValueError("stream() takes one prompt; use generate() for a batch")
        for name in ("on_text", "cancel"):
            if name in kwargs:
                raise ValueError(f"stream() does not take {name} (closing the iterator cancels it)")
        chunks: queue.SimpleQueue = queue.SimpleQueue()  # put() never blocks (see core_calls)
        call = CoreCall()

        def on_text(row: int, delta: str) -> None:
            if delta:
                chunks.put(("text", delta))

        def worker() -> None:
            with running(call):
                run()

        def run() -> None:
            try:
                rows, _ = self._prompt_rows(
                    prompt, kwargs.pop("prompt_ids", None), kwargs.pop("chat", None), 1
                )
                stop_ids, stop_strings = self._stop(kwargs.pop("stop", None))
                hooks = _CallHooks(kwargs.pop("on_step", None), bool(kwargs.pop("reuse_cache", False)))
                config = self._config(**{k: v for k, v in kwargs.items() if k != "num_samples"})
                config.stop_ids = stop_ids
                out = self._run(rows, config, stop_strings, on_text, call.token, hooks)[0]
                self.last_output = out
                chunks.put(("done", out))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                chunks.put(("error", exc))

        thread = threading.Thread(target=worker, name="sdar-stream", daemon=True)
        try:
            start_thread(thread)
            while True:
                kind, value = chunks.get()
                if kind == "text":
                    yield value
                elif kind == "done":
                    return value
                else:
                    raise value
        finally:  # also on close() and on Ctrl-C while waiting for a block
            call.token.cancel()  # a worker that starts only now ends at its first engine pass
            if thread.ident is not None:  # running: wait until it has left the core
                call.stop()

    def session(
        self, *, system: str | None = None, messages: list[dict] | None = None, chat: bool | None = None
    ) -> Conversation:
        """A ``Conversation``: turns that keep their KV cache between calls (``sdar_rt.conversation``)."""
        from .conversation import Conversation

        return Conversation(self, system=system, messages=messages, chat=chat)

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
        eb_threshold=0.35,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        seed=0,
        fused_commit=True,
    ) -> _core.GenerationConfig:
        # The core checks every parameter (types here, ranges when the call starts) and raises a
        # ValueError subclass naming it: one set of rules and messages for every entry point.
        return _core.GenerationConfig(
            max_new_tokens=max_new_tokens,
            denoising_steps=denoising_steps,
            remasking=remasking,
            threshold=threshold,
            eb_threshold=eb_threshold,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            fused_commit=fused_commit,
        )

    def _stop(self, stop) -> tuple[list[int], list[str]]:
        if stop is None:
            return [], []
        items = [stop] if isinstance(stop, (str, int)) else list(stop)
        ids: list[int] = []
        strings: list[str] = []
        for item in items:
            if _is_int(item):
                ids.append(item)  # the core checks the range
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
        self, rows: list[list[int]], config, stop_strings: list[str], on_text, token, hooks: _CallHooks
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
                # Philox row word = the row's index in the request (0 for rows that are separate requests)
                config.row_ids = [0] * len(group) if hooks.independent_rows else group
                for i, out in zip(
                    group,
                    self._call([rows[i] for i in group], group, config, stop_strings, on_text, token, hooks),
                    strict=True,
                ):
                    outputs[i] = out
                if token.cancelled or (hooks.cancel is not None and hooks.cancel.is_set()):
                    break
        return [o if o is not None else GenerationOutput("", [], "cancelled", {}) for o in outputs]

    def _call(
        self, prompts, row_indices, config, stop_strings, on_text, token, hooks: _CallHooks
    ) -> list[GenerationOutput]:
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
            return not (stop_strings and all(ended)) and not cancelled_by_caller()

        def cancelled_by_caller() -> bool:
            return hooks.cancel is not None and bool(hooks.cancel.is_set())

        on_step = None
        if hooks.on_step is not None:
            step_rows = StepRows(n, L, row_indices)

            def on_step(block: int, step: int, position: int, tokens, masked) -> bool:
                for view in step_rows.update(block, step, position, tokens, masked, ended):
                    hooks.on_step(view)
                return not cancelled_by_caller()

        need_callback = on_text is not None or bool(stop_strings) or hooks.cancel is not None
        result = self._core.generate(
            prompts, config, on_block if need_callback else None, on_step=on_step,
            reuse_cache=hooks.reuse_cache, cancel=token,
        )
        stats = result.stats.to_dict()
        stats["engine"] = type(self.engine).__name__
        outs = []
        for r, row in enumerate(result.rows):
            ids = list(row.tokens)
            text = tok.decode(ids)
            reason = row.finish_reason
            cut = first_stop(text, stop_strings) if stop_strings else None
            if cut is not None:  # text and ids end where the stop string begins
                text, reason = text[:cut], "stop"
                ids = tokens_of_text(tok, ids, text)
            if reason == "cancelled" and string_stop[r]:
                reason = "stop"
            if on_text is not None and text.startswith(emitted[r]) and len(text) > len(emitted[r]):
                on_text(row_indices[r], text[len(emitted[r]) :])  # what was held back
            outs.append(GenerationOutput(text, ids, reason, stats))
        return outs
