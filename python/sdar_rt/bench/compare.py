"""Two systems timed in alternating rounds on the same prompts, and their ratio per round.

A round is one pass of each system over the prompt set, back to back, the order alternating
(A B, B A, A B, ...) so that neither always runs second. Both rates of a round see the same host
load, which two measurements minutes apart do not: on a shared machine each system's rate may vary
by half between rounds while their ratio within a round varies far less.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .spread import spread
from .timing import Pass, summarize


@dataclass
class Contender:
    """One side of a comparison. ``warm(limits)`` makes untimed calls; ``run_pass(limits, on_call)``
    times one pass. ``follows_limits``: this side generates, per prompt, at most as many tokens as
    the first side did in its first pass, so that both amortise their prefill over the same output
    length (an early stop would otherwise make the longer one look slower)."""

    label: str
    warm: Callable[[list[int] | None, Callable[[], None]], None]
    run_pass: Callable[[list[int] | None, Callable[[], None]], Pass]
    follows_limits: bool = False


@dataclass
class Rounds:
    first: list[Pass]
    second: list[Pass]

    def outputs(self, side: str) -> list:
        return [o for p in getattr(self, side) for o in p.outputs]


def alternate(first: Contender, second: Contender, runs: int, on_call: Callable[[], None]) -> Rounds:
    """``runs`` rounds; each side is warmed just before its first timed pass."""
    out = Rounds([], [])
    limits: list[int] | None = None
    for r in range(runs):
        for side in ("first", "second") if r % 2 == 0 else ("second", "first"):
            c = first if side == "first" else second
            lim = limits if c.follows_limits else None
            if r == 0:
                c.warm(lim, on_call)
            p = c.run_pass(lim, on_call)
            getattr(out, side).append(p)
            if side == "first" and limits is None:
                limits = [max(1, len(rows[0])) for rows in p.outputs]
    return out


def wall_rate(p: Pass) -> float:
    """Generated tokens / wall time around the calls."""
    return p.tokens / p.wall if p.wall else 0.0


def decode_rate(p: Pass) -> float:
    """Generated tokens / wall time after each call's prefill: a peer timed by llama-bench's ``tg``
    reports decode time only, so sdar_rt is read the same way (its prefill left out)."""
    seconds = sum(
        c["decode_seconds"]
        if c.get("decode_seconds") is not None
        else c["wall"] - c.get("prefill_engine", 0.0)
        for c in p.calls
    )
    return p.tokens / seconds if seconds > 0 else 0.0


def ratios(rounds: Rounds, rate: Callable[[Pass], float] = wall_rate) -> dict:
    """First side's tokens/s (``rate``) over the second's within each round; ``ratio`` is the median
    round's (``ratio_runs``: min / median / max), ``ratio_cpu`` the same in tokens per process
    CPU-second over all rounds (None when a side runs in another process)."""
    a, b = summarize(rounds.first), summarize(rounds.second)
    per_round = [rate(x) / rate(y) for x, y in zip(rounds.first, rounds.second, strict=True) if rate(y)]
    cpu_a, cpu_b = a.get("tokens_per_cpu_second"), b.get("tokens_per_cpu_second")
    per_round_spread = spread(per_round)
    return {
        "first": a,
        "second": b,
        "ratio": per_round_spread["median"],
        "ratio_runs": per_round_spread,
        "ratio_cpu": cpu_a / cpu_b if cpu_a and cpu_b else None,
    }


def break_even_tpf(sdar_row: dict, ar_row: dict) -> float | None:
    """The tokens per forward at which sdar_rt decodes as fast as an autoregressive peer: sdar_rt's wall
    time per decode forward over the peer's time per generated token, both after the prompt's prefill.
    sdar_rt's decode rate is TPF x 1000 / its ms per forward, so its decode rate over the peer's is
    exactly the measured TPF / this."""
    fwd, tok = sdar_row.get("wall_ms_per_decode_forward"), ar_row.get("ms_per_token_after_prefill")
    return fwd / tok if fwd and tok else None
