"""Text of a growing token sequence, decoded incrementally.

Streaming calls back after every block. Decoding a row's whole token list each time costs
O(n) per block and O(n^2) per call; here each update decodes only a short window: the tokens
since the last emitted boundary, with the previous window as left context (a tokenizer's decode of
a suffix can differ from the same tokens in context, e.g. at word-boundary markers), and holds back
text that ends in an incomplete UTF-8 character (U+FFFD) until the next tokens complete it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

_INCOMPLETE = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalText:
    """``text`` is always a prefix of ``decoder.decode(ids)``, and equal to it after ``finish()``."""

    def __init__(self, decoder: Decoder):
        self._decoder = decoder
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # start of the context window
        self._read = 0  # end of the tokens already turned into text

    def extend(self, new_ids: Sequence[int]) -> str:
        """Adds tokens; returns the text they completed (possibly empty)."""
        self.ids.extend(new_ids)
        if self._read == len(self.ids):
            return ""
        context = self._decoder.decode(self.ids[self._prefix : self._read])
        window = self._decoder.decode(self.ids[self._prefix :])
        if window.endswith(_INCOMPLETE) or len(window) <= len(context) or not window.startswith(context):
            return ""  # wait for the tokens that complete a character
        delta = window[len(context) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += delta
        return delta

    def finish(self) -> str:
        """Flushes what is held back (an incomplete character becomes U+FFFD, as decode gives)."""
        full = self._decoder.decode(self.ids)
        delta = full[len(self.text) :] if full.startswith(self.text) else ""
        self.text = full
        self._prefix = self._read = len(self.ids)
        return delta


def first_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index of the earliest occurrence of any of ``stops`` that ends after ``start``, else None."""
    longest = max((len(s) for s in stops), default=0)
    origin = max(0, start - longest + 1)
    hits = [i for i in (text.find(s, origin) for s in stops) if i >= 0]
    return min(hits) if hits else None


def tokens_of_text(decoder: Decoder, ids: list[int], text: str) -> list[int]:
    """The shortest prefix of ``ids`` whose decoded text begins with ``text`` (a prefix of
    ``decoder.decode(ids)``): the tokens of the text a stop string cut, the one that reaches into the
    stop string included when part of it is kept. Once a prefix's text holds ``text`` every longer
    one does (more tokens only add text, or complete a character held as U+FFFD), so a binary
    search decodes log2(len(ids)) prefixes."""
    lo, hi = 0, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if decoder.decode(ids[:mid]).startswith(text):
            hi = mid
        else:
            lo = mid + 1
    return list(ids[:lo])
