"""Token-equality checks that must pass before sdar-bench reports any speed.

Fused and separate commit must give the same tokens, batched rows the batch-1 tokens, and the
PyTorch reference sdar_rt's tokens; a speed measured on wrong tokens means nothing.
"""

from __future__ import annotations


class BenchMismatch(RuntimeError):
    """Two runs that must produce the same tokens did not: no speed is reported."""


class Checks:
    """Equality checks; a failed one raises BenchMismatch at once."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    def equal(self, what: str, a: list, b: list) -> None:
        bad = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        self.items.append(
            {"check": what, "calls": len(a), "equal": not bad, "first_mismatch": bad[0] if bad else None}
        )
        if bad:
            i = bad[0]
            raise BenchMismatch(
                f"{what}: tokens differ in {len(bad)} of {len(a)} calls (first: call {i}: "
                f"{a[i]} vs {b[i]}); not reporting speed"
            )

    @property
    def passed(self) -> bool:
        return bool(self.items) and all(c["equal"] for c in self.items)
