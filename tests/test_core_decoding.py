"""The C++ core, through its bindings, against the cache-free reference of CONTRACTS.md's rules."""

from __future__ import annotations

import itertools
import signal
import threading

import numpy as np
import pytest
from sdar_reference import FakeEngine, reference_decode, uniform
from sdar_rt import _core

V, MASK, EOS = 32, 31, 1


def make(L=4, batch=1, max_context=96, prefill_chunk=0, eos=(EOS,), engine=None):
    spec = _core.ModelSpec(
        num_layers=2,
        num_kv_heads=2,
        head_dim=4,
        vocab_size=V,
        block_length=L,
        max_context=max_context,
        batch=batch,
        kv_dtype="float32",
        mask_id=MASK,
        eos_ids=list(eos),
        prefill_chunk=prefill_chunk,
    )
    engine = engine or FakeEngine()
    return _core.Generator(spec, engine), engine


def prompt(n, salt=0):
    rng = np.random.default_rng(1000 + n + 17 * salt)
    return [int(x) for x in rng.integers(2, MASK, size=n)]


def config(**kw):
    return _core.GenerationConfig(**kw)


def ref(p, L, row=0, eos=(EOS,), **kw):
    return reference_decode(p, L=L, V=V, mask_id=MASK, eos_ids=eos, row=row, **kw)


POLICIES = ["sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded"]


@pytest.mark.parametrize("L", [4, 8])
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("n", [8, 11])
@pytest.mark.parametrize("fused", [True, False])
def test_greedy_matches_reference(L, policy, n, fused):
    gen, engine = make(L=L, eos=())
    kw = dict(max_new_tokens=21, remasking=policy, threshold=0.6)
    out = gen.generate([prompt(n)], config(fused_commit=fused, **kw))
    tokens, reason, steps = ref(prompt(n), L, eos=(), **kw)
    row = out.rows[0]
    assert list(row.tokens) == tokens and row.finish_reason == reason == "length"
    s = out.stats
    assert list(s.steps_per_block) == steps
    assert s.nfe_prefill == (1 if n >= L else 0)
    committed = len(steps) - 1
    if fused:
        assert (s.nfe_commit, s.nfe_fused, s.nfe_denoise) == (0, committed, sum(steps) - committed)
        assert all(kind != "prefill" for kind, _, _ in engine.calls[s.nfe_prefill :])
    else:
        assert (s.nfe_commit, s.nfe_fused, s.nfe_denoise) == (committed, 0, sum(steps))
    assert s.nfe == s.nfe_prefill + sum(steps) + (0 if fused else committed)
    assert s.tokens_generated == 21 and s.decode_forwards == s.nfe - s.nfe_prefill
    assert s.tpf == pytest.approx(21 / s.decode_forwards)


@pytest.mark.parametrize("threshold", [0.3, 0.7, 0.95, 1.0])
@pytest.mark.parametrize("steps", [1, 2, 3, 4])
def test_dynamic_threshold_and_steps(threshold, steps):
    gen, _ = make(L=4, eos=())
    kw = dict(
        max_new_tokens=17, remasking="low_confidence_dynamic", threshold=threshold, denoising_steps=steps
    )
    out = gen.generate([prompt(6)], config(**kw))
    tokens, _, spb = ref(prompt(6), 4, eos=(), **kw)
    assert list(out.rows[0].tokens) == tokens
    assert list(out.stats.steps_per_block) == spb
    assert max(spb) <= steps


# entropy_bounded: budget 0 fills one position per step, a huge one the whole block in one step;
# V = 32 puts the fake model's entropies in (0, log 32 = 3.47), so 0.35 .. 6 fill varying counts.
@pytest.mark.parametrize("eb_threshold", [0.0, 0.35, 1.5, 6.0, 1e9])
@pytest.mark.parametrize("L,steps", [(4, None), (8, None), (8, 2)])
@pytest.mark.parametrize("fused", [True, False])
def test_entropy_bounded_matches_reference(eb_threshold, L, steps, fused):
    gen, _ = make(L=L, eos=())
    kw = dict(
        max_new_tokens=37, remasking="entropy_bounded", eb_threshold=eb_threshold, denoising_steps=steps
    )
    out = gen.generate([prompt(6)], config(fused_commit=fused, **kw))
    tokens, reason, spb = ref(prompt(6), L, eos=(), **kw)
    assert list(out.rows[0].tokens) == tokens and out.rows[0].finish_reason == reason == "length"
    assert list(out.stats.steps_per_block) == spb
    if eb_threshold == 0.0:  # one position per step, whatever denoising_steps says
        assert spb[1:] == [L] * (len(spb) - 1)
    if eb_threshold == 1e9:
        assert spb == [1] * len(spb)
    if eb_threshold == 1.5:  # neither extreme: the entropies decide
        assert max(spb[1:]) > 1 and min(spb[1:]) < L


def test_entropy_bounded_rows_and_sampling():
    gen, _ = make(L=4, batch=3, eos=(EOS, 2, 3))
    prompts = [prompt(9, salt=s) for s in range(3)]
    kw = dict(
        max_new_tokens=22, remasking="entropy_bounded", eb_threshold=1.0, temperature=0.5, top_p=0.9, seed=3
    )
    out = gen.generate(prompts, config(**kw))
    for r, p in enumerate(prompts):
        tokens, reason, _ = ref(p, 4, row=r, eos=(EOS, 2, 3), **kw)
        assert list(out.rows[r].tokens) == tokens and out.rows[r].finish_reason == reason


def test_entropy_against_reference():
    from sdar_reference import ref_entropy

    rng = np.random.default_rng(5)
    for _ in range(200):
        logits = (rng.standard_normal(64) * rng.uniform(0.1, 30)).astype(np.float32)
        if rng.uniform() < 0.2:
            logits[rng.integers(0, 64, size=5)] = -np.inf
        t = float(rng.choice([0.0, 0.3, 1.0, 2.5]))
        assert _core.entropy(logits, t) == pytest.approx(ref_entropy(logits, t), rel=1e-13, abs=1e-13)
    # exact cases: one-hot is 0, uniform is log V; the whole vocabulary at a large size
    assert _core.entropy(np.array([0, -np.inf, -np.inf], np.float32)) == 0.0
    assert _core.entropy(np.zeros(151936, np.float32), 1.0) == pytest.approx(np.log(151936), rel=1e-14)
    # temperature sharpens or flattens the distribution the entropy is of
    x = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    assert _core.entropy(x, 0.5) < _core.entropy(x, 0.0) == _core.entropy(x, 1.0) < _core.entropy(x, 2.0)


def test_fused_removes_one_forward_per_committed_block():
    for policy, n in itertools.product(POLICIES, [4, 9]):
        a, _ = make(L=4)
        b, _ = make(L=4)
        kw = dict(max_new_tokens=30, remasking=policy, threshold=0.5)
        fa = a.generate([prompt(n)], config(fused_commit=True, **kw))
        ub = b.generate([prompt(n)], config(fused_commit=False, **kw))
        assert list(fa.rows[0].tokens) == list(ub.rows[0].tokens)
        committed = len(ub.stats.steps_per_block) - 1
        assert fa.stats.nfe == ub.stats.nfe - committed


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("L", [4, 8])
def test_batch_rows_equal_rows_alone(fused, L):
    gen, _ = make(L=L, batch=3, eos=(EOS, 2, 3))
    prompts = [prompt(10, salt=s) for s in range(3)]
    kw = dict(max_new_tokens=25, remasking="low_confidence_dynamic", threshold=0.5)
    out = gen.generate(prompts, config(fused_commit=fused, **kw))
    reasons = set()
    for r, p in enumerate(prompts):
        tokens, reason, _ = ref(p, L, row=r, eos=(EOS, 2, 3), **kw)
        assert list(out.rows[r].tokens) == tokens
        assert out.rows[r].finish_reason == reason
        reasons.add(reason)
    assert out.stats.num_rows == 3


def test_fewer_prompts_than_batch_and_sampling_rows():
    gen, _ = make(L=4, batch=3)
    prompts = [prompt(7, salt=s) for s in range(2)]
    kw = dict(max_new_tokens=15, temperature=0.8, top_k=10, top_p=0.9, seed=99)
    out = gen.generate(prompts, config(**kw))
    assert len(out.rows) == 2
    for r, p in enumerate(prompts):
        assert list(out.rows[r].tokens) == ref(p, 4, row=r, **kw)[0]
    # a row decoded alone with the same row id gives the same tokens
    alone = gen.generate([prompts[1]], config(row_ids=[1], **kw))
    assert list(alone.rows[0].tokens) == list(out.rows[1].tokens)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8), (2.0, 8, 0.5)]
)
def test_sampling_matches_reference(policy, temperature, top_k, top_p):
    gen, _ = make(L=4)
    kw = dict(
        max_new_tokens=19,
        remasking=policy,
        threshold=0.5,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=1234,
    )
    out = gen.generate([prompt(5)], config(**kw))
    tokens, reason, spb = ref(prompt(5), 4, **kw)
    assert list(out.rows[0].tokens) == tokens and out.rows[0].finish_reason == reason
    assert list(out.stats.steps_per_block) == spb


def test_seeded_sampling_reproducible_and_seed_matters():
    gen, _ = make(L=4, eos=())
    kw = dict(max_new_tokens=24, temperature=1.5)
    a = gen.generate([prompt(6)], config(seed=7, **kw)).rows[0].tokens
    b = gen.generate([prompt(6)], config(seed=7, **kw)).rows[0].tokens
    c = gen.generate([prompt(6)], config(seed=8, **kw)).rows[0].tokens
    assert list(a) == list(b) and list(a) != list(c)


def test_top_k_1_and_tiny_top_p_equal_greedy():
    gen, _ = make(L=4, eos=())
    greedy = gen.generate([prompt(9)], config(max_new_tokens=20, remasking="sequential")).rows[0].tokens
    k1 = (
        gen.generate(
            [prompt(9)], config(max_new_tokens=20, remasking="sequential", temperature=1.0, top_k=1, seed=5)
        )
        .rows[0]
        .tokens
    )
    p0 = (
        gen.generate(
            [prompt(9)],
            config(max_new_tokens=20, remasking="sequential", temperature=0.9, top_p=1e-9, seed=5),
        )
        .rows[0]
        .tokens
    )
    assert list(greedy) == list(k1) == list(p0)


def test_sampler_against_reference_and_filters():
    from sdar_reference import ref_sample

    rng = np.random.default_rng(0)
    for _ in range(200):
        logits = (rng.standard_normal(50) * rng.uniform(0.1, 5)).astype(np.float32)
        t = float(rng.choice([0.0, 0.5, 1.0, 2.0]))
        k = int(rng.choice([0, 1, 3, 10, 60]))
        p = float(rng.choice([1.0, 0.9, 0.3]))
        u = float(rng.uniform())
        tok, conf = _core.sample(logits, t, k, p, u)
        rtok, rconf = ref_sample(logits, t, k, p, u)
        assert tok == rtok and conf == pytest.approx(rconf, rel=1e-12)
        if t > 0 and 0 < k < 50:
            assert tok in np.argsort(-logits, kind="stable")[:k]
    # ties: lowest index
    assert _core.sample(np.array([1, 5, 5, 2], np.float32))[0] == 1
    assert _core.sample(np.array([0, 0, 0, 0], np.float32), 1.0, 0, 1.0, 0.0)[0] == 0
    # a large vocabulary works and the confidence is the filtered probability
    big = np.zeros(151936, np.float32)
    big[77] = 20.0
    assert _core.sample(big, 1.0, 0, 0.5, 0.99)[0] == 77
    tok, conf = _core.sample(big, 1.0, 2, 1.0, 0.0)
    assert tok == 77 and conf == pytest.approx(1 / (1 + np.exp(-20.0)))


def test_philox_known_answers_and_uniform():
    assert _core.philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert _core.philox4x32_10([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2) == [
        0x408F276D,
        0x41C83B0E,
        0xA20BC7C6,
        0x6D5451FD,
    ]
    assert _core.philox4x32_10(
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0]
    ) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]
    for args in [(0, 0, 0, 0), (2**40 + 3, 5, 7, 11), (2**64 - 1, 1, 2, 3)]:
        assert _core.philox_uniform(*args) == uniform(*args)
    assert _core.denoising_schedule(8, 3) == [3, 3, 2]


@pytest.mark.parametrize("fused", [True, False])
def test_stop_tokens_and_max_new_tokens(fused):
    gen, _ = make(L=4)
    # find a prompt whose greedy continuation contains token 5, then stop on it
    for salt in range(40):
        p = prompt(6, salt)
        full = list(gen.generate([p], config(max_new_tokens=30, fused_commit=fused)).rows[0].tokens)
        if len(full) > 3 and full.index(full[3]) == 3 and full[3] != EOS:
            break
    stop = full[3]
    out = gen.generate([p], config(max_new_tokens=30, stop_ids=[stop], fused_commit=fused))
    assert list(out.rows[0].tokens) == full[:3] and out.rows[0].finish_reason == "stop"
    assert list(out.rows[0].tokens) == ref(p, 4, max_new_tokens=30, stop_ids=[stop])[0]
    short = gen.generate([p], config(max_new_tokens=2, fused_commit=fused))
    assert list(short.rows[0].tokens) == full[:2] and short.rows[0].finish_reason == "length"
    assert len(short.stats.steps_per_block) == 1


def test_prefill_chunks_and_engine_calls():
    gen, engine = make(L=4, max_context=64, prefill_chunk=8)
    p = prompt(22)
    out = gen.generate([p], config(max_new_tokens=9))
    assert out.stats.nfe_prefill == 3
    assert engine.calls[:3] == [("prefill", 0, 8), ("prefill", 8, 8), ("prefill", 16, 4)]
    assert list(out.rows[0].tokens) == ref(p, 4, max_new_tokens=9)[0]
    past = [c[1] for c in engine.calls[3:]]
    assert past == sorted(past) and all(x % 4 == 0 for x in past)


def test_callback_tokens_and_cancel():
    gen, _ = make(L=4, eos=())
    seen = []
    out = gen.generate(
        [prompt(6)], config(max_new_tokens=13), lambda i, toks: seen.append((i, list(toks[0])))
    )
    assert [i for i, _ in seen] == list(range(len(seen)))
    assert sum((t for _, t in seen), []) == list(out.rows[0].tokens)
    assert len(seen[0][1]) == 2  # 6 prompt tokens: the first block has 2 free slots
    assert out.stats.time_to_first_block > 0
    calls = []
    cancelled = gen.generate([prompt(6)], config(max_new_tokens=40), lambda i, t: calls.append(i) or i < 1)
    assert cancelled.rows[0].finish_reason == "cancelled" and calls == [0, 1]
    assert list(cancelled.rows[0].tokens) == list(out.rows[0].tokens)[:6]


def test_generator_usable_after_engine_error_callback_error_and_interrupt():
    engine = FakeEngine(fail_on_call=4)
    gen, _ = make(L=4, engine=engine)
    with pytest.raises(RuntimeError, match="fake engine failure"):
        gen.generate([prompt(8)], config(max_new_tokens=12))
    good = gen.generate([prompt(8)], config(max_new_tokens=12))
    assert list(good.rows[0].tokens) == ref(prompt(8), 4, max_new_tokens=12)[0]

    def bad_callback(i, toks):
        raise KeyError("from callback")

    with pytest.raises(KeyError, match="from callback"):
        gen.generate([prompt(8)], config(max_new_tokens=12), bad_callback)
    engine.interrupt_on_call = len(engine.calls) + 3
    # A process started in the background by a non-interactive shell inherits SIGINT as ignored, and
    # Python then installs no Ctrl-C handler: install Python's own so the signal raises, as in a terminal.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            gen.generate([prompt(8)], config(max_new_tokens=12))
    finally:
        signal.signal(signal.SIGINT, previous)
    again = gen.generate([prompt(8)], config(max_new_tokens=12))
    assert list(again.rows[0].tokens) == list(good.rows[0].tokens)


def test_concurrent_generate_is_serialised():
    gen, engine = make(L=4, eos=())
    results, errors = {}, []

    def work(i):
        try:
            results[i] = list(gen.generate([prompt(5 + i)], config(max_new_tokens=20)).rows[0].tokens)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in range(3):
        assert results[i] == ref(prompt(5 + i), 4, eos=(), max_new_tokens=20)[0]


BAD = [
    (lambda: [[]], {}, "empty"),
    (lambda: [[1, 2, V]], {}, "outside"),
    (lambda: [[1, 2, -1]], {}, "outside"),
    (lambda: [[1, 2], [1, 2, 3]], {}, "equal length"),
    (lambda: [], {}, "no prompts"),
    (lambda: [[1]] * 4, {}, "batch"),
    (lambda: [[1, 2]], {"denoising_steps": 5}, "denoising_steps"),
    (lambda: [[1, 2]], {"denoising_steps": -1}, "denoising_steps"),
    (lambda: [[1, 2]], {"threshold": 0.0}, "threshold"),
    (lambda: [[1, 2]], {"threshold": 1.5}, "threshold"),
    (lambda: [[1, 2]], {"remasking": "entropy_bounded", "eb_threshold": -0.1}, "eb_threshold"),
    (lambda: [[1, 2]], {"eb_threshold": float("nan")}, "eb_threshold"),
    (lambda: [[1, 2]], {"eb_threshold": float("inf")}, "eb_threshold"),
    (lambda: [[1, 2]], {"temperature": -0.1}, "temperature"),
    (lambda: [[1, 2]], {"temperature": float("nan")}, "temperature"),
    (lambda: [[1, 2]], {"top_p": 0.0}, "top_p"),
    (lambda: [[1, 2]], {"top_p": 1.01}, "top_p"),
    (lambda: [[1, 2]], {"top_k": -1}, "top_k"),
    (lambda: [[1, 2]], {"max_new_tokens": 0}, "max_new_tokens"),
    (lambda: [[1, 2]], {"stop_ids": [V]}, "stop id"),
    (lambda: [[1, 2]], {"row_ids": [0, 1]}, "row_ids"),
]


@pytest.mark.parametrize("prompts,kw,match", BAD)
def test_bad_inputs(prompts, kw, match):
    gen, engine = make(L=4, batch=3)
    with pytest.raises(ValueError, match=match):
        gen.generate(prompts(), config(**kw))
    assert engine.calls == []


def test_context_overflow_message():
    gen, engine = make(L=4, max_context=32, eos=())
    with pytest.raises(
        _core.ContextOverflowError, match=r"10 tokens \+ max_new_tokens 23 needs 36 .*max_context 32"
    ):
        gen.generate([prompt(10)], config(max_new_tokens=23))
    assert engine.calls == []
    assert issubclass(_core.ContextOverflowError, ValueError)
    ok = gen.generate([prompt(10)], config(max_new_tokens=22))  # exactly 32
    assert len(ok.rows[0].tokens) == 22


def test_bad_spec_and_policy():
    with pytest.raises(ValueError, match="multiple of block_length"):
        _core.ModelSpec(
            num_layers=1, num_kv_heads=1, head_dim=2, vocab_size=8, block_length=4, max_context=30, mask_id=7
        )
    with pytest.raises(ValueError, match="mask_id"):
        _core.ModelSpec(
            num_layers=1, num_kv_heads=1, head_dim=2, vocab_size=8, block_length=4, max_context=32, mask_id=8
        )
    with pytest.raises(ValueError, match="dtype"):
        _core.ModelSpec(
            num_layers=1,
            num_kv_heads=1,
            head_dim=2,
            vocab_size=8,
            block_length=4,
            max_context=32,
            mask_id=7,
            kv_dtype="int8",
        )
    with pytest.raises(ValueError, match="remasking"):
        config(remasking="random")


def test_bindings_and_cache_layout():
    gen, engine = make(L=4, batch=3, max_context=64)
    b = gen.bindings
    assert engine.bound == 1
    assert b.row_bytes == 3 * 2 * 4 * 4 and b.ids_capacity == 64 and len(b.key_cache) == 2
    assert all(a % 64 == 0 for a in [b.input_ids, b.logits, *b.key_cache, *b.value_cache])
    assert gen.spec.row_bytes == b.row_bytes and b.kv_dtype == "float32" and not b.device_memory
    half = _core.ModelSpec(
        num_layers=1,
        num_kv_heads=2,
        head_dim=8,
        vocab_size=8,
        block_length=4,
        max_context=32,
        kv_dtype="bfloat16",
        mask_id=7,
    )
    assert half.row_bytes == 2 * 8 * 2
