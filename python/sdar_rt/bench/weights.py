"""How far two weight formats of one checkpoint agree on greedy tokens (float vs int4).

The quantized tokens are not required to equal the float ones: agreement is a measurement.
"""

from __future__ import annotations


def token_agreement(ours: list[list[list[int]]], theirs: list[list[list[int]]]) -> dict:
    """Agreement of two output sets (outputs[call][row] = token ids): the fraction of positions with the
    same token (over the longer row of each pair, so a length difference counts as disagreement) and
    the fraction of rows that are identical."""
    pairs = [(a, b) for ca, cb in zip(ours, theirs, strict=True) for a, b in zip(ca, cb, strict=True)]
    same = sum(sum(x == y for x, y in zip(a, b, strict=False)) for a, b in pairs)
    total = sum(max(len(a), len(b)) for a, b in pairs)
    return {
        "tokens_equal": same,
        "tokens_compared": total,
        "token_agreement": same / total if total else 1.0,
        "rows_equal": sum(a == b for a, b in pairs),
        "rows": len(pairs),
        "row_agreement": sum(a == b for a, b in pairs) / len(pairs) if pairs else 1.0,
    }
