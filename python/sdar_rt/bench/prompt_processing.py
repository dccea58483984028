"""Prompt processing: the rate at which sdar_rt and an AR peer take in a long prompt (512 tokens, or
what the artifact's context allows), in alternating rounds as the decode comparisons are.

sdar_rt's figure is the prompt's prefill inside ``generate()`` (the whole blocks of the prompt, in
the engine's prefill chunks; the ``prefill_seconds`` of its stats), asking for one new token; the
peer's is its own: llama-bench's ``pp`` test, onnxruntime-genai's ``append_tokens`` of the prompt.
Each round times ``calls`` prompts of the same length on each side, distinct prompts (cycled from the
run's prompt tokens), with the same threads.
"""

from __future__ import annotations

from collections.abc import Callable

from .prompts import cycled
from .spread import spread

DEFAULT_TOKENS = 512


def prompt_length(artifact, want: int) -> int | None:
    """The longest whole-block prompt of at most ``want`` tokens that leaves a block of the
    artifact's context for generation; None when not even one block fits."""
    L = artifact.block_length
    n = min(want, artifact.max_context - L) // L * L
    return n if n >= L else None


def sdar_prefill_seconds(gen, prompts: list[list[int]]) -> list[float]:
    """sdar_rt's prefill time of each prompt (one generate call each, one new token asked)."""
    out = []
    for p in prompts:
        res = gen.generate(prompt_ids=p, max_new_tokens=1, denoising_steps=1)
        out.append(float(res.stats["prefill_seconds"]))
    return out


def compare(
    gen,
    peer_seconds: Callable[[list[list[int]]], list[float]],
    pool: list[list[int]],
    *,
    tokens: int,
    calls: int,
    rounds: int,
    on_call: Callable[[], None] | None = None,
) -> dict:
    """``rounds`` alternating rounds of ``calls`` prompts of ``tokens`` tokens each on both sides;
    ``peer_seconds(prompts)`` times the peer on them. Rates in prompt tokens per second."""
    prompts = cycled(pool, tokens, calls)
    sdar_prefill_seconds(gen, prompts[:1])  # warm-up: the engine's prefill workspace
    ours: list[float] = []
    theirs: list[float] = []
    for r in range(rounds):
        for side in ("sdar_rt", "peer") if r % 2 == 0 else ("peer", "sdar_rt"):
            secs = sdar_prefill_seconds(gen, prompts) if side == "sdar_rt" else peer_seconds(prompts)
            (ours if side == "sdar_rt" else theirs).append(tokens * len(secs) / sum(secs))
            if on_call is not None:
                on_call()
    per_round = [a / b for a, b in zip(ours, theirs, strict=True)]
    return {
        "prompt_tokens": tokens,
        "calls_per_round": calls,
        "sdar_rt_tokens_per_second": spread(ours),
        "peer_tokens_per_second": spread(theirs),
        "ratio": spread(per_round)["median"],
        "ratio_runs": spread(per_round),
    }
