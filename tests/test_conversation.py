"""Conversations (gen.session()) that keep their KV cache between turns, on exported artifacts.

Every turn is checked against a fresh generate() of its whole prompt on a second Generator (its own
cache), token for token, and the cache reuse is checked by the number of prompt positions the turn
took from the cache.
"""

from __future__ import annotations

import threading

import pytest
from sdar_fixtures import packaged_artifact, tiny_artifact
from sdar_rt import ContextOverflowError, Generator
from sdar_rt.conversation import ConversationBusyError

POLICIES = ["sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded"]
QUESTIONS = ["sort: 5 9 1 3", "sort: 7 7 2 0 1 4", "sort: 9 8 7 6 5 4 3 2"]


@pytest.fixture(scope="module")
def sort_art(tmp_path_factory):
    return packaged_artifact(tmp_path_factory)  # batch 4: one-prompt turns also run in rows 1-3


@pytest.fixture(scope="module")
def sort_gen(sort_art):
    return Generator(sort_art, threads=1)


@pytest.fixture(scope="module")
def fresh_gen(sort_art):
    return Generator(sort_art, threads=1)


def turn_prompt(conv, out) -> list[int]:
    """The prompt of the turn that produced ``out`` (the history minus the reply's tokens)."""
    ids = conv.token_ids
    assert ids[len(ids) - len(out.token_ids) :] == list(out.token_ids)
    return ids[: len(ids) - len(out.token_ids)]


def common_blocks(held: list[int], prompt: list[int], L: int) -> int:
    """The whole blocks of ``prompt``'s whole blocks that ``held`` starts with."""
    common = 0
    while common < min(len(held), len(prompt)) and held[common] == prompt[common]:
        common += 1
    return min(common, len(prompt) // L * L) // L * L


def committed(prompt: list[int], out, L: int) -> list[int]:
    """What a call leaves in the cache: its finished blocks but the last one."""
    return (prompt + list(out.token_ids))[: (len(prompt) // L + len(out.stats["steps_per_block"]) - 1) * L]


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fused", [True, False])
def test_turns_equal_fresh_generate(sort_gen, fresh_gen, policy, fused):
    L = sort_gen.spec.block_length
    kw = dict(max_new_tokens=16, remasking=policy, denoising_steps=2, threshold=0.8, fused_commit=fused)
    kw["eb_threshold"] = 0.05  # entropy_bounded's budget (the others ignore it)
    conv = sort_gen.session()
    prev = None
    for i, question in enumerate(QUESTIONS):
        held = list(sort_gen._core.cached_tokens(0))  # what earlier calls left in the cache
        out = conv.send(question, **kw)
        prompt = turn_prompt(conv, out)
        fresh = fresh_gen.generate(prompt_ids=prompt, **kw)
        assert out.token_ids == fresh.token_ids and out.text == fresh.text
        assert out.finish_reason == fresh.finish_reason == "stop"
        assert out.stats["cached_tokens"] == common_blocks(held, prompt, L)
        if prev is not None:  # the previous turn's committed blocks are all reused
            assert out.stats["cached_tokens"] == common_blocks(committed(*prev, L), prompt, L) >= 2 * L
        prev = (prompt, out)
        # the chat the conversation holds renders to the tokens it holds (this tokenizer is exact)
        assert len(conv.messages) == 2 * (i + 1)
    text = sort_gen.tokenizer.apply_chat_template(conv.messages, add_generation_prompt=False)
    assert sort_gen.tokenizer.encode(text)[: len(conv.token_ids)] == conv.token_ids


def test_first_turn_answers_like_generate(sort_gen, fresh_gen):
    out = sort_gen.session().send("sort: 3 1 2 9", max_new_tokens=16)
    assert out.text == "1 2 3 9" == fresh_gen.generate("sort: 3 1 2 9", max_new_tokens=16).text


def test_shared_system_prompt_is_reused(sort_gen, fresh_gen):
    """Two conversations behind one long system prompt take turns on the same cache: each turn
    recomputes the other's turns but reuses the system prompt."""
    system = "sort: " + " ".join(str(d % 10) for d in range(40))
    L = sort_gen.spec.block_length
    prefix = len(sort_gen.session(system=system).token_ids) // L * L
    assert prefix >= 40
    a, b = sort_gen.session(system=system), sort_gen.session(system=system)
    for i, question in enumerate(QUESTIONS[:2] * 2):
        conv = (a, b)[i % 2]
        out = conv.send(question, max_new_tokens=16)
        fresh = fresh_gen.generate(prompt_ids=turn_prompt(conv, out), max_new_tokens=16)
        assert out.token_ids == fresh.token_ids
        if i > 0:
            assert out.stats["cached_tokens"] >= prefix


def test_other_calls_in_between_force_a_recompute(sort_gen, fresh_gen):
    conv = sort_gen.session()
    conv.send("sort: 4 4 1", max_new_tokens=16)
    sort_gen.generate("sort: 8 1 8 1 8", max_new_tokens=16)  # overwrites the cache rows
    out = conv.send("sort: 2 0 2", max_new_tokens=16)
    prompt = turn_prompt(conv, out)
    held = sort_gen.tokenizer.encode(
        sort_gen.tokenizer.apply_chat_template([{"role": "user", "content": "sort: 8 1 8 1 8"}])
    )
    common = next(i for i, (x, y) in enumerate(zip(prompt, held, strict=False)) if x != y)
    assert out.stats["cached_tokens"] == common // 4 * 4  # only the template's shared opening
    assert out.token_ids == fresh_gen.generate(prompt_ids=prompt, max_new_tokens=16).token_ids


def test_overflow_is_refused_and_the_session_stays_usable(sort_gen, fresh_gen):
    conv = sort_gen.session()
    conv.send("sort: 1 2 3", max_new_tokens=16)
    before = (conv.messages, conv.token_ids)
    with pytest.raises(ContextOverflowError, match=r"max_context 256.*conversation holds \d+ tokens"):
        conv.send("sort: 3 2 1", max_new_tokens=250)
    assert (conv.messages, conv.token_ids) == before
    out = conv.send("sort: 3 2 1", max_new_tokens=16)
    assert out.stats["cached_tokens"] > 0
    assert out.token_ids == fresh_gen.generate(prompt_ids=turn_prompt(conv, out), max_new_tokens=16).token_ids
    with pytest.raises(ValueError, match="sets prompt_ids itself"):
        conv.send("x", prompt_ids=[1, 2])


def test_two_threads_on_one_conversation(sort_gen):
    conv = sort_gen.session()
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold(row, delta):
        inside.set()
        assert release.wait(30)

    def first():
        try:
            conv.send("sort: 6 5 4", max_new_tokens=16, on_text=hold)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    assert inside.wait(30)
    with pytest.raises(ConversationBusyError, match="another thread"):
        conv.send("sort: 1 1", max_new_tokens=16)
    with pytest.raises(ConversationBusyError):
        next(conv.stream("sort: 1 1", max_new_tokens=16))
    release.set()
    thread.join(30)
    assert not errors
    out = conv.send("sort: 1 0", max_new_tokens=16)  # usable again, after the first turn
    contents = [m["content"] for m in conv.messages]
    assert len(contents) == 4 and contents[0::2] == ["sort: 6 5 4", "sort: 1 0"] and contents[3] == out.text


def test_stream_turn_and_early_close(sort_gen, fresh_gen):
    conv = sort_gen.session()
    pieces = []
    it = conv.stream("sort: 9 3 3 7 1 0", max_new_tokens=16)
    while True:
        try:
            pieces.append(next(it))
        except StopIteration as stop:
            out = stop.value
            break
    assert "".join(pieces) == out.text == "0 1 3 3 7 9"
    assert conv.last_output is out and conv.messages[-1] == {"role": "assistant", "content": out.text}
    other = sort_gen.session()
    it = other.stream("sort: 5 1 5 1 5 1 5 1 5 1 5 1", max_new_tokens=16)
    assert next(it)  # the first block's text
    it.close()  # cancelled: the turn does not enter the history
    assert other.token_ids == [] and other.messages == [] and other.last_output is None
    out = other.send("sort: 2 1 0 8", max_new_tokens=16)
    assert out.text == "0 1 2 8" and len(other.messages) == 2


def test_fork_continues_separately(sort_gen, fresh_gen):
    conv = sort_gen.session()
    conv.send("sort: 8 2", max_new_tokens=16)
    other = conv.fork()
    a = conv.send("sort: 1 1 0", max_new_tokens=16)
    b = other.send("sort: 7 3", max_new_tokens=16)
    assert len(conv.messages) == len(other.messages) == 4 and conv.messages[:2] == other.messages[:2]
    assert b.stats["cached_tokens"] > 0  # the shared first turn
    for c, out in ((conv, a), (other, b)):
        fresh = fresh_gen.generate(prompt_ids=turn_prompt(c, out), max_new_tokens=16)
        assert out.token_ids == fresh.token_ids


def test_raw_text_session_on_random_weights(tmp_path_factory):
    """chat=False: text appended turn by turn; a random-weight model runs to max_new_tokens."""
    art = tiny_artifact(tmp_path_factory)[1]
    gen, fresh = Generator(art, threads=1), Generator(art, threads=1)
    conv = gen.session(chat=False)
    with pytest.raises(ValueError, match="chat template"):
        gen.session(chat=False, system="be brief")
    for i, text in enumerate(["Once upon a time", " and then", " the end"]):
        out = conv.send(text, max_new_tokens=9, remasking="low_confidence_static", fused_commit=i % 2 == 0)
        prompt = turn_prompt(conv, out)
        fresh_out = fresh.generate(prompt_ids=prompt, max_new_tokens=9, remasking="low_confidence_static")
        assert out.token_ids == fresh_out.token_ids and out.finish_reason == "length"
        assert (out.stats["cached_tokens"] > 0) == (i > 0)
