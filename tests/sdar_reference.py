"""Test helpers: a deterministic fake step-graph engine and an independent, cache-free Python
implementation of CONTRACTS.md's decoding rules (one row at a time).

The fake "model": the logits of position p are a pseudo-random function of every token p may see
under the block-causal rule (all tokens of earlier blocks and of p's own block) and of p. The fake
engine recovers the cached tokens from the K/V rows it wrote earlier, so any cache mistake
(missing commit, wrong rows, stale data) changes the logits and shows up as a token mismatch.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import math

import numpy as np
from sdar_rt import _core

_MEMO: dict[bytes, np.ndarray] = {}


def fake_logits(visible: np.ndarray, position: int, vocab: int) -> np.ndarray:
    key = (
        np.asarray(visible, dtype=np.int64).tobytes()
        + int(position).to_bytes(8, "little")
        + bytes([vocab % 256])
    )
    hit = _MEMO.get(key)
    if hit is None:
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little")
        rng = np.random.default_rng(seed)
        scale = rng.uniform(0.3, 7.0)
        hit = (rng.standard_normal(vocab) * scale).astype(np.float32)
        _MEMO[key] = hit
    return hit


def _view(address: int, dtype, count: int) -> np.ndarray:
    ctype = {np.int64: ctypes.c_int64, np.float32: ctypes.c_float}[dtype]
    return np.ctypeslib.as_array((ctype * count).from_address(address))


class FakeEngine(_core.Engine):
    """Implements the Engine contract over the core's buffers with the fake model."""

    def __init__(self, fail_on_call: int | None = None, interrupt_on_call: int | None = None):
        super().__init__()
        self.calls: list[tuple[str, int, int]] = []
        self.fail_on_call = fail_on_call
        self.interrupt_on_call = interrupt_on_call
        self.active = False
        self.bound = 0

    def bind(self, b) -> None:
        assert b.kv_dtype == "float32" and b.head_dim >= 2
        self.bound += 1
        self.B, self.L, self.V = b.batch, b.block_length, b.vocab_size
        self.capacity = b.ids_capacity
        self.ids = _view(b.input_ids, np.int64, b.batch * b.ids_capacity)
        self.logits = _view(b.logits, np.float32, b.batch * b.block_length * b.vocab_size).reshape(
            b.batch, b.block_length, b.vocab_size
        )
        shape = (b.max_context, b.batch, b.num_kv_heads, b.head_dim)
        count = int(np.prod(shape))
        assert b.row_bytes == b.batch * b.num_kv_heads * b.head_dim * 4
        self.K = [_view(a, np.float32, count).reshape(shape) for a in b.key_cache]
        self.Vc = [_view(a, np.float32, count).reshape(shape) for a in b.value_cache]

    def run(self, kind, past_len: int, tokens: int) -> None:
        assert not self.active, "concurrent run() on one engine"
        self.active = True
        try:
            self._run(kind, past_len, tokens)
        finally:
            self.active = False

    def _run(self, kind, past_len, tokens) -> None:
        name = _core.graph_name(kind)
        self.calls.append((name, past_len, tokens))
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("fake engine failure")
        if self.interrupt_on_call is not None and len(self.calls) == self.interrupt_on_call:
            import signal

            signal.raise_signal(signal.SIGINT)
        L, B = self.L, self.B
        assert past_len % L == 0 and tokens % L == 0 and 0 < tokens <= self.capacity
        assert {"prefill": True, "decode": tokens == L, "fused": tokens == 2 * L}[name]
        ids = self.ids[: B * tokens].reshape(B, tokens).copy()
        # The cache prefix must hold exactly what earlier passes wrote for rows [0, past_len).
        past = self.K[0][:past_len, :, 0, 0].astype(np.int64).T  # [B, past_len]
        for i, (k, v) in enumerate(zip(self.K, self.Vc, strict=True)):
            assert np.array_equal(
                k[:past_len, :, :, 1],
                np.broadcast_to(
                    np.arange(past_len, dtype=np.float32)[:, None, None], (past_len, B, k.shape[2])
                ),
            ), "stale cache rows"
            assert np.array_equal(k[:past_len, :, 0, 0].astype(np.int64).T, past)
            assert np.array_equal(v[:past_len, :, 0, 0], k[:past_len, :, 0, 0] * 2 + i)
        positions = np.arange(past_len, past_len + tokens, dtype=np.float32)
        for i, (k, v) in enumerate(zip(self.K, self.Vc, strict=True)):
            k[past_len : past_len + tokens, :, :, 0] = ids.T[:, :, None]
            k[past_len : past_len + tokens, :, :, 1] = positions[:, None, None]
            v[past_len : past_len + tokens, :, :, 0] = ids.T[:, :, None] * 2 + i
        if name == "prefill":
            return
        for b in range(B):
            for j in range(L):
                a = tokens - L + j
                visible = np.concatenate([past[b], ids[b, : (a // L + 1) * L]])
                self.logits[b, j] = fake_logits(visible, past_len + a, self.V)


# ---------------------------------------------------------------- reference decoding

_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF


def philox(counter, key):
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
        p0, p1 = _M0 * c0, _M1 * c2
        c0, c1, c2, c3 = (
            ((p1 >> 32) ^ c1 ^ k0) & _MASK32,
            p1 & _MASK32,
            ((p0 >> 32) ^ c3 ^ k1) & _MASK32,
            p0 & _MASK32,
        )
    return [c0, c1, c2, c3]


def uniform(seed: int, row: int, step: int, position: int) -> float:
    out = philox([row, step, position, 0], [seed & _MASK32, seed >> 32])
    return (out[0] >> 8) * 2.0**-24


def ref_sample(
    logits: np.ndarray, temperature: float, top_k: int, top_p: float, u: float
) -> tuple[int, float]:
    values = [float(x) for x in logits]
    V = len(values)
    if temperature == 0:
        best = max(range(V), key=lambda i: (values[i], -i))
        total = 0.0
        for x in values:
            total += math.exp(x - values[best])
        return best, 1.0 / total
    z = [x / temperature for x in values]
    zmax = max(z)
    w = [math.exp(x - zmax) for x in z]
    order = sorted(range(V), key=lambda i: (-w[i], i))
    if 0 < top_k < V:
        order = order[:top_k]
        total = 0.0
        for i in order:
            total += w[i]
    else:
        total = 0.0
        for x in w:
            total += x
    kept = order
    kept_sum = total
    if top_p < 1.0:
        running = 0.0
        for j, i in enumerate(order):
            running += w[i]
            if running >= top_p * total:
                kept = order[: j + 1]
                break
        kept_sum = running
    running = 0.0
    chosen = kept[-1]
    for i in kept:
        running += w[i]
        if running > u * kept_sum:
            chosen = i
            break
    return chosen, w[chosen] / kept_sum


def ref_entropy(logits: np.ndarray, temperature: float) -> float:
    """-sum p log p (nats) of softmax(logits / T), or of softmax(logits) when T is 0, over the whole
    vocabulary (before any top-k / top-p): written out term by term, not the core's two-sum form."""
    x = [float(v) for v in logits]
    if temperature > 0:
        x = [v / temperature for v in x]
    top = max(x)
    w = [math.exp(v - top) for v in x]
    total = math.fsum(w)
    h = 0.0
    for wi in w:
        if wi > 0.0:
            p = wi / total
            h -= p * math.log(p)
    return h


def entropy_bounded_choice(masked: list[int], entropy: dict[int, float], budget: float) -> list[int]:
    """The masked positions by ascending entropy (ties: lower position), the longest prefix whose
    cumulative entropy is strictly below ``budget``, at least one."""
    ranked = sorted(masked, key=lambda j: (entropy[j], j))
    cumulative = list(itertools.accumulate(entropy[j] for j in ranked))
    take = max(1, sum(1 for c in cumulative if c < budget))
    return ranked[:take]


def schedule(L: int, steps: int) -> list[int]:
    return [L // steps + (1 if k < L % steps else 0) for k in range(steps)]


def reference_decode(
    prompt,
    *,
    L,
    V,
    mask_id,
    eos_ids,
    max_new_tokens,
    denoising_steps=None,
    remasking="low_confidence_dynamic",
    threshold=0.9,
    eb_threshold=0.35,
    temperature=0.0,
    top_k=0,
    top_p=1.0,
    seed=0,
    row=0,
    stop_ids=(),
    logits_fn=None,
):
    """Decodes one row from scratch every step. Returns (tokens, finish_reason, steps_per_block).

    ``logits_fn(visible_ids, position)`` gives the float32 logits of ``position`` given every token it
    may see (default: the fake model)."""
    if logits_fn is None:

        def logits_fn(visible, position):
            return fake_logits(np.array(visible), position, V)

    n, m = len(prompt), max_new_tokens
    steps = denoising_steps or L
    sched = schedule(L, steps)
    total = -(-(n + m) // L) * L
    seq = list(prompt) + [mask_id] * (total - n)
    masked = [False] * n + [True] * (total - n)
    stops = set(eos_ids) | set(stop_ids)
    out: list[int] = []
    step_index = 0
    steps_per_block = []
    for b in range(n // L, total // L):
        s = b * L
        k = 0
        while any(masked[s : s + L]):
            mpos = [j for j in range(L) if masked[s + j]]
            n_k = min(sched[k] if k < steps else L, len(mpos))
            samples = {}
            entropy: dict[int, float] = {}
            for j in mpos:
                u = uniform(seed, row, step_index, s + j) if temperature > 0 else 0.0
                logits = logits_fn(seq[: s + L], s + j)
                samples[j] = ref_sample(logits, temperature, top_k, top_p, u)
                if remasking == "entropy_bounded":
                    entropy[j] = ref_entropy(logits, temperature)
            if remasking == "sequential":
                chosen = mpos[:n_k]
            elif remasking == "entropy_bounded":
                chosen = entropy_bounded_choice(mpos, entropy, eb_threshold)
            else:
                ranked = sorted(mpos, key=lambda j: (-samples[j][1], j))
                above = [j for j in mpos if samples[j][1] > threshold]
                chosen = ranked[:n_k]
                if remasking == "low_confidence_dynamic" and len(above) >= n_k:
                    chosen = above
            for j in chosen:
                seq[s + j] = samples[j][0]
                masked[s + j] = False
            step_index += 1
            k += 1
        steps_per_block.append(k)
        reason = None
        for p in range(max(n, s), s + L):
            if p - n >= m:
                break
            if seq[p] in stops:
                reason = "stop"
                break
            out.append(seq[p])
        if reason is None and len(out) >= m:
            reason = "length"
        if reason:
            return out, reason, steps_per_block
    raise AssertionError("unreachable")
