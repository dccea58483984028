"""What sdar_rt is compared with, each in alternating rounds (``compare``) on the primary configuration's
prompts and weights, one comparison's models in memory at a time:

- ``int4``: sdar_rt with int4 weights (``sdar-export --int4``) against the float weights;
- ``ar``: sdar_rt's own autoregressive mode (the network exported with block length 1 = causal);
- ``reference``: SDAR decoding in plain PyTorch with a KV cache (tokens must equal sdar_rt's);
- ``ort-genai``: onnxruntime-genai's AR generator on the same float weights, and with ``--int4``
  also ``ort-genai-int4``: its int4 model, built by its own builder with the int4 artifact's scheme,
  against sdar_rt's int4 artifact;
- ``llama.cpp``: llama.cpp's ``llama-bench`` on the same weights converted to GGUF by llama.cpp's own
  converter (F32 against float32), and with ``--int4`` also ``llama.cpp-int4``: Q4_0 with every
  matrix Q4_0 against sdar_rt's int4 artifact (``llamacpp``); rates after the prompt's prefill on both
  sides, since llama-bench's ``tg`` times decoding only;
- ``ar-ort-genai`` (with both ``ar`` and ``ort-genai``): sdar_rt's AR mode against onnxruntime-genai,
  two autoregressive decoders on the same float weights, so that their costs per token are compared
  in one pair of rounds rather than through two comparisons with sdar_rt.

The comparisons with onnxruntime-genai and llama.cpp also time prompt processing (a 512-token prompt,
or what the artifact's context allows) on both sides in rounds of their own (``prompt_processing``).
"""

from __future__ import annotations

import gc
import statistics

from ..artifact_cache import ExportOptions, cache_root, checkpoint_key
from . import prompt_processing
from .checks import Checks
from .compare import Contender, alternate, break_even_tpf, decode_rate, ratios, wall_rate
from .generators import sdar_generator
from .progress import Phases, log
from .timing import Pass, baseline_pass, sdar_pass
from .weights import token_agreement

BASELINES = ("reference", "ar", "ort-genai", "llama.cpp")
AR_PEERS = ("ar", "ort-genai", "ort-genai-int4", "llama.cpp", "llama.cpp-int4", "ar-ort-genai")
# the peers whose comparison also times prompt processing, and their own measure of it
PROMPT_PEERS = ("ort-genai", "ort-genai-int4", "llama.cpp", "llama.cpp-int4")


def planned(baselines: list[str], int4: bool) -> list[str]:
    """The comparisons in the order they run: int4 right after the float sweep, the int4 peer right
    after the float one."""
    out = ["int4"] if int4 else []
    for name in baselines:
        out.append(name)
        if name in ("ort-genai", "llama.cpp") and int4:
            out.append(f"{name}-int4")
    if "ar" in baselines and "ort-genai" in baselines:
        out.append("ar-ort-genai")
    return out


def lowbit(a) -> ExportOptions:
    return ExportOptions(quantize="int4", group_size=a.group_size or 128, lm_head_bits=a.lm_head_bits)


def _weights_label(art) -> str:
    q = art.quantization
    if not q:
        return art.dtype
    return f"{q['weights']} g{q['group_size']}, LM head {q.get('lm_head', art.dtype)}"


def _sdar(a, gen, prompts, kwargs, label: str, follows_limits: bool = False) -> Contender:
    def warm(limits, on_call):
        for i in range(a.warmup):
            kw = kwargs if limits is None else {**kwargs, "max_new_tokens": limits[i % len(prompts)]}
            gen.generate(prompt_ids=prompts[i % len(prompts)], **kw)
            on_call()

    return Contender(
        label,
        warm,
        lambda limits, on_call: sdar_pass(gen, prompts, kwargs, limits=limits, on_call=on_call),
        follows_limits,
    )


def _baseline(a, generate, n: int, label: str, follows_limits: bool) -> Contender:
    """``generate(i, limit)``: prompt i, at most ``limit`` new tokens (None: the run's max_new_tokens)."""

    def warm(limits, on_call):
        for i in range(a.warmup):
            generate(i % n, limits[i % n] if limits else None)
            on_call()

    def run_pass(limits, on_call):
        return baseline_pass(lambda i: generate(i, limits[i] if limits else None), n, on_call=on_call)

    return Contender(label, warm, run_pass, follows_limits)


def _ort_genai_skipped() -> dict | None:
    """The report entry of a comparison with onnxruntime-genai when it is not installed, else None."""
    from . import ortgenai

    reason = ortgenai.missing_reason()
    if reason:
        log(f"skipped: {reason}")
        return {"skipped": reason}
    return None


class Runner:
    """Runs the planned comparisons against the sweep's primary configuration."""

    def __init__(self, a, targets, primary: dict, checks: Checks, phases: Phases):
        self.a, self.targets, self.primary, self.checks, self.phases = a, targets, primary, checks, phases
        self.prompts, self.kwargs = primary["prompts"], {**primary["kwargs"], "fused_commit": True}
        self.config = {**primary["config"], "commit": "fused"}

    def _primary_gen(self, weights: ExportOptions | None = None):
        return sdar_generator(self.a, self.targets.artifact(self.config["block_length"], 1, weights))

    def _compare(self, first: Contender, second: Contender, bar, rate=wall_rate) -> dict:
        bar.start(2 * (self.a.warmup + self.a.runs * len(self.prompts)))
        rounds = alternate(first, second, self.a.runs, bar.advance)
        out = ratios(rounds, rate)
        out["_rounds"] = rounds
        return out

    def run(self, kind: str) -> dict:
        titles = {
            "int4": "sdar_rt int4 weights vs float weights",
            "ar": "sdar_rt vs its AR mode (block length 1)",
            "reference": "sdar_rt vs the PyTorch reference",
            "ort-genai": "sdar_rt vs onnxruntime-genai",
            "ort-genai-int4": "sdar_rt int4 vs onnxruntime-genai int4",
            "ar-ort-genai": "sdar_rt's AR mode vs onnxruntime-genai",
            "llama.cpp": "sdar_rt vs llama.cpp",
            "llama.cpp-int4": "sdar_rt int4 vs llama.cpp",
        }
        self._peer_prefill = None
        from .llamacpp_tools import LlamaCppUnavailable

        with self.phases.phase(f"{titles[kind]}: {self.a.runs} alternating rounds") as bar:
            try:
                res = getattr(self, "_" + kind.replace("-", "_").replace(".", "_"))(bar)
                if self._peer_prefill is not None and "skipped" not in res and self.a.pp_tokens:
                    res["prompt_processing"] = self._prompt_processing(res, bar)
            except LlamaCppUnavailable as exc:  # a peer tool that fails while timed: the rest goes on
                log(f"skipped: {exc}")
                res = {"skipped": str(exc)}
        self._peer_prefill = None
        gc.collect()
        res["kind"], res["title"] = kind, titles[kind]
        rounds = res.pop("_rounds", None)
        if rounds is not None and kind == "reference":
            self.checks.equal(
                "reference (PyTorch) vs sdar_rt", rounds.outputs("second"), rounds.outputs("first")
            )
            res["tokens_equal"] = True
        if rounds is not None and kind == "int4":
            res["agreement"] = token_agreement(rounds.outputs("first"), rounds.outputs("second"))
        if "first" in res:
            first, second = res["first"], res["second"]
            res["tpf"] = first.get("tpf")
            if kind in AR_PEERS:
                # For the AR mode (TPF 1) this is its cost per token over the peer's.
                res["break_even_tpf"] = break_even_tpf(first, second)
        return res

    def _prompt_processing(self, res: dict, bar) -> dict:
        """Prompt processing of the comparison just run, sdar_rt's side on the same artifact."""
        gen, peer_seconds = self._peer_prefill
        tokens = prompt_processing.prompt_length(gen.artifact, self.a.pp_tokens)
        if tokens is None:
            return {
                "skipped": f"the artifact's context ({gen.artifact.max_context}) holds no whole-block prompt"
            }
        calls = min(4, len(self.prompts))
        bar.start(2 * self.a.runs)
        log(f"prompt processing: {tokens}-token prompts, {calls} per side per round, {self.a.runs} rounds")
        return prompt_processing.compare(
            gen,
            peer_seconds,
            self.prompts,
            tokens=tokens,
            calls=calls,
            rounds=self.a.runs,
            on_call=bar.advance,
        )

    def _int4(self, bar) -> dict:
        q = self._primary_gen(lowbit(self.a))
        f = self._primary_gen()
        first = _sdar(self.a, q, self.prompts, self.kwargs, "sdar_rt")
        second = _sdar(self.a, f, self.prompts, self.kwargs, "sdar_rt")
        res = self._compare(first, second, bar)
        res["first"].update(
            system="sdar_rt",
            weights=_weights_label(q.artifact),
            config=self.config,
            artifact=str(q.artifact.path),
        )
        res["second"].update(system="sdar_rt", weights=_weights_label(f.artifact), config=self.config)
        return res

    def _ar_mode(self, follows_limits: bool) -> tuple[Contender, dict]:
        """sdar_rt's AR mode (the float network exported with block length 1) and its row fields."""
        ar = sdar_generator(self.a, self.targets.artifact(1, 1))
        ar_kw = {"max_new_tokens": self.a.max_new_tokens, "denoising_steps": 1, "fused_commit": True}
        fields = {
            "system": "ar",
            "weights": _weights_label(ar.artifact),
            "config": {
                "block_length": 1,
                "steps": 1,
                "batch": 1,
                "commit": "fused",
                "prompt_length": self.config["prompt_length"],
            },
        }
        return _sdar(self.a, ar, self.prompts, ar_kw, "ar", follows_limits=follows_limits), fields

    def _ar(self, bar) -> dict:
        gen = self._primary_gen()
        ar, ar_fields = self._ar_mode(follows_limits=True)
        res = self._compare(_sdar(self.a, gen, self.prompts, self.kwargs, "sdar_rt"), ar, bar)
        res["first"].update(system="sdar_rt", weights=_weights_label(gen.artifact), config=self.config)
        res["second"].update(ar_fields)
        return res

    def _reference(self, bar) -> dict:
        from .reference import ReferenceDecoder

        gen = self._primary_gen()
        art, kw = gen.artifact, self.kwargs
        ref = ReferenceDecoder(
            self.targets.need_weights("reference"),
            block_length=art.block_length,
            mask_id=art.mask_id,
            eos_ids=art.eos_ids,
            threads=self.a.threads,
        )

        def generate(i, _limit):
            return ref.generate(
                self.prompts[i],
                max_new_tokens=kw["max_new_tokens"],
                denoising_steps=kw["denoising_steps"],
                remasking=kw["remasking"],
                threshold=kw["threshold"],
            )

        res = self._compare(
            _sdar(self.a, gen, self.prompts, kw, "sdar_rt"),
            _baseline(self.a, generate, len(self.prompts), "reference", False),
            bar,
        )
        res["first"].update(system="sdar_rt", weights=_weights_label(art), config=self.config)
        res["second"].update(
            system="reference", weights="float32", config={**self.config, "commit": "separate"}
        )
        return res

    def _ort_genai_peer(self, quant: dict | None):
        """onnxruntime-genai's AR generator (built by its own builder, with the scheme of ``quant``, an
        artifact's quantization or None for float weights) and its row fields."""
        import onnxruntime_genai

        from . import ortgenai

        model_dir = self.targets.need_weights("ort-genai")
        out = (
            cache_root() / "ort-genai" / f"{model_dir.name}-{checkpoint_key(model_dir)}-"
            f"oga{onnxruntime_genai.__version__}-{ortgenai.model_tag(quant)}"
        )
        runner = ortgenai.OrtGenaiRunner(
            ortgenai.build(model_dir, out, quant, log=log), threads=self.a.threads
        )

        def generate(i, limit):
            return runner.generate(self.prompts[i], max_new_tokens=limit or self.a.max_new_tokens)

        prompt_length = self.config["prompt_length"]
        fields = {
            "system": "ort-genai",
            "config": {"block_length": 1, "steps": 1, "batch": 1, "prompt_length": prompt_length},
            "note": "causal LM (next-token logits): its tokens are not compared with sdar_rt's",
        }
        return _baseline(self.a, generate, len(self.prompts), "ort-genai", True), fields, runner

    def _ort_genai(self, bar, weights: ExportOptions | None = None) -> dict:
        if skipped := _ort_genai_skipped():
            return skipped
        gen = self._primary_gen(weights)
        quant = gen.artifact.quantization
        peer, peer_fields, runner = self._ort_genai_peer(quant)
        self._peer_prefill = (gen, lambda prompts: [runner.prefill_seconds(p) for p in prompts])
        res = self._compare(_sdar(self.a, gen, self.prompts, self.kwargs, "sdar_rt"), peer, bar)
        label = _weights_label(gen.artifact)
        res["first"].update(system="sdar_rt", weights=label, config=self.config)
        res["second"].update(peer_fields, weights=label if quant else "float32")
        return res

    def _ort_genai_int4(self, bar) -> dict:
        return self._ort_genai(bar, lowbit(self.a))

    def _ar_ort_genai(self, bar) -> dict:
        if skipped := _ort_genai_skipped():
            return skipped
        # The AR mode first: onnxruntime-genai then generates per prompt as many tokens as it did.
        ar, ar_fields = self._ar_mode(follows_limits=False)
        peer, peer_fields, _ = self._ort_genai_peer(None)
        res = self._compare(ar, peer, bar)
        res["first"].update(ar_fields)
        res["second"].update(peer_fields, weights="float32")
        return res

    def _llama_cpp(self, bar, weights: ExportOptions | None = None) -> dict:
        from . import llamacpp, llamacpp_tools

        gen = self._primary_gen(weights)
        art = gen.artifact
        try:
            llamacpp.gguf_type(art.dtype, art.quantization)  # a format llama.cpp has, before any build
            tools = llamacpp_tools.tools(self.a.llama_cpp, log=log, isa=_llama_cpp_isa(self.a))
            model = llamacpp.gguf(
                tools, self.targets.need_weights("llama.cpp"), art.dtype, art.quantization, log
            )
        except llamacpp_tools.LlamaCppUnavailable as exc:
            log(f"skipped: {exc}")
            return {"skipped": str(exc)}
        threads = self.a.threads or _engine_threads()
        depth = round(statistics.median(len(p) for p in self.prompts))

        def run_pass(limits, on_call):
            n_gen = max(1, round(statistics.mean(limits))) if limits else self.a.max_new_tokens
            return _llama_bench_pass(
                llamacpp.bench(
                    tools, model, threads=threads, reps=len(self.prompts), n_gen=n_gen, depth=depth
                ),
                n_gen,
                on_call,
            )

        def warm(limits, on_call):  # llama-bench runs a warm-up of its own before each test
            for _ in range(self.a.warmup):
                on_call()

        def peer_prefill(prompts):
            return llamacpp.bench(tools, model, threads=threads, reps=len(prompts), n_prompt=len(prompts[0]))

        self._peer_prefill = (gen, peer_prefill)
        peer = Contender("llama.cpp", warm, run_pass, follows_limits=True)
        res = self._compare(_sdar(self.a, gen, self.prompts, self.kwargs, "sdar_rt"), peer, bar, decode_rate)
        label = _weights_label(art)
        res["rate"] = "decode"
        res["first"].update(system="sdar_rt", weights=label, config=self.config)
        res["second"].update(
            system="llama.cpp",
            weights=f"GGUF {llamacpp.model_tag(art.dtype, art.quantization)}",
            config={"block_length": 1, "steps": 1, "batch": 1, "context": depth},
            threads=threads,
            llama_cpp=tools.version,
            llama_cpp_isa=tools.isa,
            note="llama-bench tg: decode time per token after an untimed context of the prompts' median "
            "length; its tokens are not compared with sdar_rt's",
        )
        return res

    def _llama_cpp_int4(self, bar) -> dict:
        return self._llama_cpp(bar, lowbit(self.a))


def _llama_cpp_isa(a) -> str | None:
    """The instruction set llama.cpp is built for (None: this CPU's): --llama-cpp-isa, else the one of
    sdar_rt's kernel table when that is narrower than the CPU's own."""
    from .. import _core
    from . import llamacpp_tools

    if a.llama_cpp_isa != "auto":
        return None if a.llama_cpp_isa == "native" else a.llama_cpp_isa
    return llamacpp_tools.isa_for(a.cpu_kernels, list(_core.cpu_kernels_available()))


def _engine_threads() -> int:
    """The threads sdar_rt's engines run when --threads is not given (what the peer is then given)."""
    from ..cpu_engine import default_threads

    return default_threads()


def _llama_bench_pass(samples: list[float], n_gen: int, on_call) -> Pass:
    """One llama-bench tg run as a pass: each repetition one call of ``n_gen`` decoded tokens."""
    p = Pass()
    for seconds in samples:
        p.calls.append(
            {
                "wall": seconds,
                "tokens": n_gen,
                "rows": 1,
                "forwards": n_gen,
                "nfe": {},
                "ttfb": seconds / n_gen,
                "blocks": [],
                "decode_seconds": seconds,
                "decode_tokens": n_gen,
                "rss": None,
            }
        )
        p.outputs.append([[]])
        on_call()
    return p
