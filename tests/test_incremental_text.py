"""Incremental detokenization for streaming: the concatenated deltas equal one full decode, for
multi-byte text split at every token boundary, with O(window) decoding per update."""

from __future__ import annotations

import random

import pytest
from sdar_rt.incremental_text import IncrementalText, first_stop

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tokenizer():
    from sdar_export.make_checkpoint import build_tokenizer

    return build_tokenizer(300)  # byte-level BPE: multi-byte characters span several tokens


class CountingDecoder:
    """Wraps a tokenizers.Tokenizer; records how many ids each decode call gets."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def decode(self, ids, skip_special_tokens=True):
        self.lengths.append(len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


TEXTS = ["Once upon a time, a robot said: héllo wörld — ¿qué tal? 日本語のテキスト 🙂🚀 done.",
         "plain ascii only, numbers 12345 and    spaces", "ééééé", "🙂"]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_concatenate_to_the_full_decode(tokenizer, text):
    ids = tokenizer.encode(text).ids
    assert tokenizer.decode(ids) == text
    rng = random.Random(0)
    for _ in range(20):
        inc, pieces, i = IncrementalText(CountingDecoder(tokenizer)), [], 0
        while i < len(ids):
            step = rng.randint(1, 4)
            pieces.append(inc.extend(ids[i : i + step]))
            assert tokenizer.decode(ids[: i + step]).startswith(inc.text)  # never ahead of the truth
            assert "\ufffd" not in inc.text  # an incomplete character is held back, not shown
            i += step
        pieces.append(inc.finish())
        assert "".join(pieces) == text == inc.text


def test_decoding_cost_stays_bounded(tokenizer):
    ids = tokenizer.encode("abc def ghi " * 200).ids
    dec = CountingDecoder(tokenizer)
    inc = IncrementalText(dec)
    for i in range(0, len(ids), 4):
        inc.extend(ids[i : i + 4])
    assert inc.text == tokenizer.decode(ids)
    assert max(dec.lengths) <= 8  # two blocks of context at most, whatever the row length


def test_incomplete_character_at_the_end_is_flushed_by_finish(tokenizer):
    ids = tokenizer.encode("🙂").ids
    assert len(ids) > 1
    inc = IncrementalText(tokenizer)
    assert inc.extend(ids[:-1]) == ""
    assert inc.finish() == tokenizer.decode(ids[:-1])  # U+FFFD, as a full decode gives


def test_first_stop():
    assert first_stop("hello world", ["wor", "lo"]) == 3
    assert first_stop("hello world", ["xyz"]) is None
    # a stop string that straddles the previous end is found from `start`
    assert first_stop("abcSTOPx", ["STOP"], start=5) == 3


def test_tokens_of_a_cut_text(tokenizer):
    """The ids of text cut at a stop string: the shortest prefix whose decode holds the kept text,
    for every cut of a multi-byte text (the token reaching into the cut is kept, the next is not)."""
    from sdar_rt.incremental_text import tokens_of_text

    text = "héllo wörld ☃ sorted: 1 2 3"
    ids = tokenizer.encode(text).ids
    dec = CountingDecoder(tokenizer)
    for cut in range(len(text) + 1):
        kept = tokens_of_text(dec, ids, text[:cut])
        assert kept == ids[:len(kept)] and tokenizer.decode(kept).startswith(text[:cut])
        assert not kept or not tokenizer.decode(kept[:-1]).startswith(text[:cut]), (cut, kept)
    assert tokens_of_text(dec, ids, "") == [] and tokens_of_text(dec, ids, text) == ids
    assert max(dec.lengths) <= len(ids) and len(dec.lengths) <= (len(text) + 1) * (len(ids).bit_length() + 1)
