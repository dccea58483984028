"""The core's KV-cache reuse across calls (reuse_cache) and its step callback, with the fake engine.

The fake engine reads the cached tokens back from the K/V rows it wrote, so a call that trusted a
stale or foreign cache row computes different logits and its tokens differ from the cache-free
reference decode of its full prompt: token equality here is the proof that reuse is exact.
"""

from __future__ import annotations

import pytest
from sdar_reference import FakeEngine
from sdar_rt import _core
from test_core_decoding import EOS, MASK, POLICIES, config, make, prompt, ref


def prefill_starts(engine: FakeEngine, since: int) -> list[tuple[int, int]]:
    return [(past, tokens) for name, past, tokens in engine.calls[since:] if name == "prefill"]


def check_row(out_row, p, L, eos=(EOS,), **kw):
    tokens, reason, _ = ref(p, L, eos=eos, **kw)
    assert list(out_row.tokens) == tokens
    assert out_row.finish_reason == reason


@pytest.mark.parametrize("L", [4, 8])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("fused", [True, False])
def test_turns_reuse_the_committed_prefix(L, policy, fused):
    """Three turns, each prompt = the previous prompt + its output + new tokens: every turn equals a
    fresh decode of its whole prompt, and prefills only what the cache did not hold."""
    gen, engine = make(L=L, eos=(), max_context=160)
    kw = dict(max_new_tokens=11, remasking=policy, threshold=0.6, fused_commit=fused)
    history = prompt(13)
    for turn in range(3):
        held = list(gen.cached_tokens(0))
        assert held == history[: len(held)]  # the cache only ever holds a prefix of the history
        since = len(engine.calls)
        out = gen.generate([history], config(**kw), reuse_cache=True)
        check_row(out.rows[0], history, L, eos=(), **{k: v for k, v in kw.items() if k != "fused_commit"})
        expected_reuse = min(len(held), len(history) // L * L) // L * L
        assert out.stats.cached_tokens == expected_reuse
        if turn > 0:
            assert expected_reuse > 0
        starts = prefill_starts(engine, since)
        prompt_chunks = [s for s in starts if s[0] < len(history) // L * L]
        assert sum(t for _, t in prompt_chunks) == len(history) // L * L - expected_reuse
        assert out.stats.nfe_prefill == len(prompt_chunks)
        # The committed prefix: every finished block but the last one.
        committed = (len(history) // L + len(out.stats.steps_per_block) - 1) * L
        sequence = history + list(out.rows[0].tokens)
        assert list(gen.cached_tokens(0)) == sequence[:committed]
        history = sequence + prompt(3 + turn, salt=turn)


def test_reuse_off_prefills_everything_and_still_records():
    gen, engine = make(L=4)
    p = prompt(12)
    gen.generate([p], config(max_new_tokens=6))
    assert list(gen.cached_tokens(0))[:12] == p
    since = len(engine.calls)
    out = gen.generate([p], config(max_new_tokens=6))
    assert out.stats.cached_tokens == 0 and prefill_starts(engine, since)[0] == (0, 12)
    out = gen.generate([p], config(max_new_tokens=6), reuse_cache=True)
    assert out.stats.cached_tokens == 12 and out.stats.nfe_prefill == 0
    check_row(out.rows[0], p, 4, max_new_tokens=6)


def test_shared_prefix_survives_other_prompts():
    """Two conversations behind one system prompt, alternating on one cache row: each call reuses
    the system prompt's whole blocks and recomputes the rest, and stays exact."""
    L = 4
    gen, _ = make(L=L, max_context=160)
    system = prompt(22)
    users = [prompt(5, salt=s) for s in range(4)]
    for i, user in enumerate(users):
        p = system + user
        out = gen.generate([p], config(max_new_tokens=7), reuse_cache=True)
        check_row(out.rows[0], p, L, max_new_tokens=7)
        if i > 0:
            assert out.stats.cached_tokens == len(system) // L * L


def test_a_failed_call_leaves_nothing_trusted():
    L = 4
    engine = FakeEngine()
    gen, _ = make(L=L, engine=engine)
    p = prompt(16)
    gen.generate([p], config(max_new_tokens=8))
    assert len(gen.cached_tokens(0)) >= 16
    engine.fail_on_call = len(engine.calls) + 2  # a pass after the prefill has overwritten rows
    with pytest.raises(RuntimeError, match="fake engine failure"):
        gen.generate([prompt(16, salt=1)], config(max_new_tokens=8))
    engine.fail_on_call = None
    assert list(gen.cached_tokens(0)) == []
    out = gen.generate([p], config(max_new_tokens=8), reuse_cache=True)
    assert out.stats.cached_tokens == 0
    check_row(out.rows[0], p, L, max_new_tokens=8)


def test_bad_input_keeps_the_cache():
    gen, _ = make(L=4, max_context=64)
    p = prompt(12)
    gen.generate([p], config(max_new_tokens=6))
    held = list(gen.cached_tokens(0))
    with pytest.raises(_core.ContextOverflowError):
        gen.generate([p], config(max_new_tokens=60), reuse_cache=True)
    with pytest.raises(ValueError):
        gen.generate([p + [999]], config(max_new_tokens=4), reuse_cache=True)
    assert list(gen.cached_tokens(0)) == held
    out = gen.generate([p], config(max_new_tokens=6), reuse_cache=True)
    assert out.stats.cached_tokens == 12
    with pytest.raises(ValueError, match="row 3"):
        gen.cached_tokens(3)


def test_cancelled_call_records_what_it_committed():
    L = 4
    gen, _ = make(L=L, eos=())
    p = prompt(9)
    out = gen.generate([p], config(max_new_tokens=30), lambda block, tokens: block < 2, reuse_cache=True)
    assert out.rows[0].finish_reason == "cancelled"
    held = list(gen.cached_tokens(0))
    assert len(held) == (9 // L + 2) * L  # blocks 0 and 1 of the call committed, block 2 not
    full, _, _ = ref(p, L, eos=(), max_new_tokens=30)
    assert held == (p + full)[: len(held)]
    out = gen.generate([held + [5]], config(max_new_tokens=5), reuse_cache=True)
    assert out.stats.cached_tokens == len(held)
    check_row(out.rows[0], held + [5], L, eos=(), max_new_tokens=5)


def test_batch_rows_keep_their_own_prefixes():
    """Batch 2: a one-prompt call runs prompt 0 in row 1 too, on top of row 1's own cached prefix;
    the record says so, and a later two-prompt call reusing both rows is exact."""
    L = 4
    gen, _ = make(L=L, batch=2, eos=(), max_context=128)
    a, b = prompt(16), prompt(16, salt=1)
    gen.generate([a, b], config(max_new_tokens=5))
    assert list(gen.cached_tokens(1))[:16] == b
    a2 = a[:12] + prompt(6, salt=2)
    out = gen.generate([a2], config(max_new_tokens=5), reuse_cache=True)
    assert out.stats.cached_tokens == 12
    check_row(out.rows[0], a2, L, eos=(), max_new_tokens=5)
    row1 = list(gen.cached_tokens(1))
    assert row1[:12] == b[:12] and row1[12:16] == a2[12:16]  # own prefix + prompt 0's tokens on top
    prompts = [a2 + [7, 8], row1 + [9, 10, 11]]
    prompts[1] = prompts[1][: len(prompts[0])]
    out = gen.generate(prompts, config(max_new_tokens=5, row_ids=[0, 0]), reuse_cache=True)
    assert out.stats.cached_tokens == 16
    for r, p in enumerate(prompts):
        check_row(out.rows[r], p, L, eos=(), max_new_tokens=5)


def test_step_callback_shows_every_step():
    L = 8
    gen, _ = make(L=L, eos=())
    p = prompt(11)
    seen = []

    def on_step(block, step, start, tokens, masked):
        seen.append((block, step, start, list(tokens[0]), list(masked[0])))

    kw = dict(max_new_tokens=14, remasking="low_confidence_static", denoising_steps=4)
    out = gen.generate([p], config(**kw), on_step=on_step)
    full, _, steps = ref(p, L, eos=(), **kw)
    assert list(out.rows[0].tokens) == full
    assert len(seen) == sum(steps) == sum(out.stats.steps_per_block)
    sequence = p + full
    for block, step, start, tokens, masked in seen:
        assert start == (len(p) // L + block) * L
        for j in range(L):
            pos = start + j
            if masked[j]:
                assert tokens[j] == MASK and pos >= len(p)
            elif pos < len(sequence):
                assert tokens[j] == sequence[pos]  # an unmasked position never changes again
        if step == steps[block] - 1:
            assert not any(masked)
        # The static policy fills exactly the scheduled count per step (L=8, 4 steps: 2 each).
        generated = sum(1 for j in range(L) if start + j >= len(p))
        assert sum(masked) == max(0, generated - 2 * (step + 1))


def test_step_callback_false_cancels_mid_block():
    gen, _ = make(L=4, eos=())
    p = prompt(8)
    calls = []
    out = gen.generate(
        [p],
        config(max_new_tokens=20, remasking="sequential"),
        on_step=lambda block, step, *_: calls.append((block, step)) or not (block == 1 and step == 1),
        reuse_cache=True,
    )
    assert calls[-1] == (1, 1) and out.rows[0].finish_reason == "cancelled"
    assert len(out.rows[0].tokens) == 4  # block 0's output only; the unfinished block is not reported
    assert len(gen.cached_tokens(0)) == 12  # prompt + block 0, committed by the fused step of block 1
