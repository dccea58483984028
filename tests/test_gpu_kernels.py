"""GPU unmasking kernels (runtime/cuda) against the CPU core's sampler and remasking.

Needs an NVIDIA GPU and an sdar_rt built with nvcc; skipped visibly otherwise ("no CUDA GPU").
The CPU side is the core itself (_core.sample, _core.philox_uniform) plus an independent Python
statement of the remasking rule (CONTRACTS.md rule 5; the kernels and the core share
runtime/step_rules.h, so comparing them with each other alone would prove little), on the same
logits (fp16 / bf16 logits are widened to float32 for the CPU, as the kernels do). Tokens, Philox
uniforms and every remasking decision must be identical; confidences (entropies under
entropy_bounded, compared with _core.entropy) agree to ~1e-12 relative (float64 on both sides,
different summation order), and are NaN on both where a greedy step needs none.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sdar_rt import _core

HAVE_KERNELS = hasattr(_core, "CudaUnmask")
GPUS = _core.cuda_device_count() if HAVE_KERNELS else 0

needs_gpu = pytest.mark.skipif(
    GPUS == 0,
    reason="no CUDA GPU" + ("" if HAVE_KERNELS else " (and sdar_rt was built without the CUDA kernels)"),
)

VOCAB = 151_936  # Qwen3 / SDAR vocabulary
POLICIES = ["sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded"]
DTYPES = ["float32", "float16", "bfloat16"]
CONF_RTOL = 1e-12


# ---------------------------------------------------------------- host <-> device helpers


def to_device(array: np.ndarray):
    array = np.ascontiguousarray(array)
    dev = _core.DeviceArray(max(array.nbytes, 1))
    if array.nbytes:
        dev.upload(array)
    return dev


def from_device(dev, dtype, count: int) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    return np.frombuffer(dev.download(itemsize * count), dtype=dtype).copy()


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (finite inputs)."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def device_logits(logits32: np.ndarray, dtype: str):
    """(device array in `dtype`, the float32 values the CPU must see)."""
    if dtype == "float32":
        return to_device(logits32), logits32
    if dtype == "float16":
        half = logits32.astype(np.float16)
        return to_device(half), half.astype(np.float32)
    bits = to_bf16_bits(logits32)
    return to_device(bits), from_bf16_bits(bits)


def random_logits(rng, rows: int, L: int, V: int) -> np.ndarray:
    """Noise of varied scale plus a spike of varied height: confidences from ~1e-5 to ~1."""
    scale = rng.uniform(0.3, 7.0, size=(rows, L, 1))
    logits = rng.standard_normal((rows, L, V)) * scale
    for r in range(rows):
        for j in range(L):
            logits[r, j, rng.integers(V)] += rng.uniform(0.0, 25.0)
    return logits.astype(np.float32)


# ---------------------------------------------------------------- CPU reference (the core)


def select_positions(policy, threshold, masked, confidence, n_step):
    """CONTRACTS.md rule 5 (ties to the lower position), written independently of step_rules.h."""
    n = min(n_step, len(masked))
    if policy == "entropy_bounded":  # `confidence` holds entropies, `threshold` the budget
        order = sorted(range(len(masked)), key=lambda i: (confidence[i], masked[i]))
        take, running = 0, 0.0
        for i in order:
            running += confidence[i]
            if take and not running < threshold:
                break
            take += 1
        return [masked[i] for i in order[:take]]
    if policy == "sequential":
        return list(masked[:n])
    order = sorted(range(len(masked)), key=lambda i: (-confidence[i], masked[i]))
    take = n
    if policy == "low_confidence_dynamic":
        above = sum(1 for c in confidence if c > threshold)
        if above >= n:
            take = above
    return [masked[i] for i in order[:take]]


def cpu_step(logits32, tokens, masked, row_done, row_ids, row_steps, p):
    """One step of generator.cpp's per-row loop; mutates tokens / masked / row_steps.
    Returns {(r, j): (token, confidence)} of the sampled positions."""
    rows, L, _ = logits32.shape
    samples = {}
    for r in range(rows):
        if row_done[r]:
            continue
        offsets = [j for j in range(L) if masked[r, j]]
        if not offsets:
            continue
        n_step = min(p["scheduled"], len(offsets))
        to_sample = offsets[:n_step] if p["remasking"] == "sequential" else offsets
        # a greedy step whose confidences cannot change the choice (sequential, or every masked
        # position filled) computes none: NaN, on the host and on the device
        # (entropy_bounded: a single masked position, which a step always fills)
        decides = len(offsets) > 1 if p["remasking"] == "entropy_bounded" else n_step < len(offsets)
        skip = p["temperature"] == 0.0 and (p["remasking"] == "sequential" or not decides)
        conf = []
        for j in to_sample:
            u = 0.0
            if p["temperature"] != 0.0:
                u = _core.philox_uniform(p["seed"], int(row_ids[r]), int(row_steps[r]), p["block_start"] + j)
            token, c = _core.sample(logits32[r, j], p["temperature"], p["top_k"], p["top_p"], u)
            if p["remasking"] == "entropy_bounded":
                c = _core.entropy(logits32[r, j], p["temperature"])
            samples[(r, j)] = (token, math.nan if skip else c)
            conf.append(c)
        for j in select_positions(p["remasking"], p["threshold"], offsets, conf, n_step):
            tokens[r, j] = samples[(r, j)][0]
            masked[r, j] = 0
        row_steps[r] += 1
    return samples


# ---------------------------------------------------------------- one step, both sides


class Block:
    """Device state of one block for `rows` rows (tokens with a row stride, as in a fused input)."""

    def __init__(self, rng, rows, L, masked, row_done=None, tokens_stride=None):
        self.rows, self.L = rows, L
        self.ts = tokens_stride or L
        self.tokens = rng.integers(0, 1000, size=(rows, self.ts)).astype(np.int64)
        self.masked = masked.astype(np.uint8)
        self.row_done = np.zeros(rows, np.uint8) if row_done is None else row_done.astype(np.uint8)
        self.row_ids = rng.integers(0, 2**32, size=rows, dtype=np.uint64).astype(np.uint32)
        self.row_steps = rng.integers(0, 50, size=rows).astype(np.uint32)
        self.d_tokens = to_device(self.tokens)
        self.d_masked = to_device(self.masked)
        self.d_done = to_device(self.row_done)
        self.d_ids = to_device(self.row_ids)
        self.d_steps = to_device(self.row_steps)

    def device_state(self):
        tokens = from_device(self.d_tokens, np.int64, self.rows * self.ts).reshape(self.rows, self.ts)
        masked = from_device(self.d_masked, np.uint8, self.rows * self.L).reshape(self.rows, self.L)
        steps = from_device(self.d_steps, np.uint32, self.rows)
        return tokens, masked, steps


def run_step(ws, block, d_logits, dtype, p):
    ws.step(
        logits=d_logits.ptr,
        dtype=dtype,
        tokens=block.d_tokens.ptr,
        tokens_stride=block.ts,
        masked=block.d_masked.ptr,
        masked_stride=block.L,
        row_done=block.d_done.ptr,
        row_ids=block.d_ids.ptr,
        row_steps=block.d_steps.ptr,
        rows=block.rows,
        block_start=p["block_start"],
        scheduled=p["scheduled"],
        remasking=p["remasking"],
        threshold=p["threshold"],
        temperature=p["temperature"],
        top_k=p["top_k"],
        top_p=p["top_p"],
        seed=p["seed"],
    )


def check_step(ws, block, logits32, d_logits, dtype, p):
    """Runs one step on the GPU and on the CPU from the same state and compares everything."""
    tokens = block.tokens.copy()
    masked = block.masked.copy()
    steps = block.row_steps.copy()
    expected = cpu_step(logits32, tokens[:, : block.L], masked, block.row_done, block.row_ids, steps, p)
    run_step(ws, block, d_logits, dtype, p)
    got_tokens, got_conf, got_done, got_active = ws.results(block.rows)
    L = block.L
    for r in range(block.rows):
        for j in range(L):
            if (r, j) in expected:
                token, conf = expected[(r, j)]
                assert got_tokens[r * L + j] == token, (r, j, p)
                want = pytest.approx(conf, rel=CONF_RTOL, abs=1e-300, nan_ok=True)
                assert got_conf[r * L + j] == want, (r, j, p)
            else:
                assert got_tokens[r * L + j] == -1, (r, j, "sampled a position the CPU did not")
    dev_tokens, dev_masked, dev_steps = block.device_state()
    np.testing.assert_array_equal(dev_masked, masked)
    np.testing.assert_array_equal(dev_tokens, tokens)  # includes the untouched stride tail
    np.testing.assert_array_equal(dev_steps, steps)
    left = masked.any(axis=1) & (block.row_done == 0)
    np.testing.assert_array_equal(got_done.astype(bool), ~left)
    assert got_active == int(left.sum())
    block.tokens, block.masked, block.row_steps = dev_tokens, dev_masked, dev_steps
    return int(left.sum())


def params(**kw):
    p = dict(
        block_start=64,
        scheduled=1,
        remasking="low_confidence_dynamic",
        threshold=0.9,
        temperature=0.0,
        top_k=0,
        top_p=1.0,
        seed=0,
    )
    p.update(kw)
    return p


# ---------------------------------------------------------------- tests


@pytest.mark.skipif(
    not HAVE_KERNELS or GPUS > 0, reason="needs a build with CUDA kernels on a machine without a GPU"
)
def test_no_gpu_error_is_clear():
    with pytest.raises(_core.SdarError, match="no CUDA GPU"):
        _core.CudaUnmask(max_batch=1, block_length=4, vocab_size=VOCAB)


@needs_gpu
def test_philox_matches_cpu_bit_for_bit():
    rng = np.random.default_rng(0)
    counters = rng.integers(0, 2**32, size=(1000, 3), dtype=np.uint64).astype(np.uint32)
    counters[:10] = [[0, 0, i] for i in range(10)]
    out = _core.DeviceArray(8 * len(counters))
    for seed in (0, 1, 2**32 - 1, 2**32, 0xDEADBEEFCAFEF00D):
        _core.cuda_philox_uniforms(seed, to_device(counters).ptr, len(counters), out.ptr)
        got = from_device(out, np.float64, len(counters))
        want = [_core.philox_uniform(seed, int(a), int(b), int(c)) for a, b, c in counters]
        np.testing.assert_array_equal(got, want)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("policy", POLICIES)
def test_greedy_step_matches_cpu(dtype, policy):
    rows, L = 2, 4
    ws = _core.CudaUnmask(max_batch=rows, block_length=L, vocab_size=VOCAB, sampling=False)
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        logits32 = random_logits(rng, rows, L, VOCAB)
        d_logits, cpu_logits = device_logits(logits32, dtype)
        masked = rng.integers(0, 2, size=(rows, L))
        masked[0, :] = 1
        block = Block(rng, rows, L, masked)
        p = params(
            remasking=policy, scheduled=int(rng.integers(1, L + 1)), threshold=float(rng.uniform(0.3, 0.95))
        )
        if policy == "entropy_bounded":  # budgets from one position to several (entropies <= log V)
            p["threshold"] = float(rng.uniform(0.0, 30.0))
        check_step(ws, block, cpu_logits, d_logits, dtype, p)


@needs_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(0.7, 0, 1.0), (1.0, 50, 1.0), (0.8, 0, 0.9), (1.3, 1000, 0.95), (1.0, 1, 1.0), (2.0, 0, 0.5)],
)
def test_sampling_step_matches_cpu(dtype, temperature, top_k, top_p):
    rows, L = 2, 4
    ws = _core.CudaUnmask(max_batch=rows, block_length=L, vocab_size=VOCAB, sampling=True)
    for seed in range(4):
        rng = np.random.default_rng(200 + seed)
        logits32 = random_logits(rng, rows, L, VOCAB)
        d_logits, cpu_logits = device_logits(logits32, dtype)
        block = Block(rng, rows, L, np.ones((rows, L)))
        policy = POLICIES[seed % 4]
        p = params(
            remasking=policy, scheduled=2, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed * 7919
        )
        check_step(ws, block, cpu_logits, d_logits, dtype, p)


@needs_gpu
@pytest.mark.parametrize("temperature", [0.0, 0.9])
@pytest.mark.parametrize("policy", POLICIES)
def test_whole_block_in_lock_step(policy, temperature):
    """A block decoded step by step (schedule of rule 3, finished rows untouched, a fused-style
    token stride): every step equals the CPU's, and the block ends at the same step."""
    rows, L, steps = 3, 8, 3
    schedule = [L // steps + (1 if k < L % steps else 0) for k in range(steps)]
    ws = _core.CudaUnmask(max_batch=4, block_length=L, vocab_size=VOCAB)
    rng = np.random.default_rng(7)
    masked = np.ones((rows, L))
    masked[1, :3] = 0  # prompt tokens at the start of the block
    block = Block(rng, rows, L, masked, row_done=np.array([0, 0, 1]), tokens_stride=2 * L)
    for k in range(L + 1):
        logits32 = random_logits(rng, rows, L, VOCAB)
        d_logits, cpu_logits = device_logits(logits32, "float32")
        p = params(
            remasking=policy,
            scheduled=schedule[k] if k < steps else L,
            threshold=0.6,
            temperature=temperature,
            top_k=0,
            top_p=0.95,
            seed=1234,
            block_start=L * 5,
        )
        if check_step(ws, block, cpu_logits, d_logits, "float32", p) == 0:
            break
    else:
        pytest.fail("block never finished")
    assert ws.wait_active_rows() == 0


@needs_gpu
@pytest.mark.parametrize("V", [1003, 4096])
def test_small_and_unaligned_vocab(V):
    """V not a multiple of the vector width takes the scalar load path."""
    rows, L = 2, 4
    ws = _core.CudaUnmask(max_batch=rows, block_length=L, vocab_size=V)
    rng = np.random.default_rng(V)
    for dtype in DTYPES:
        for temperature in (0.0, 1.0):
            logits32 = random_logits(rng, rows, L, V)
            d_logits, cpu_logits = device_logits(logits32, dtype)
            block = Block(rng, rows, L, np.ones((rows, L)))
            p = params(
                remasking="low_confidence_static", scheduled=2, temperature=temperature, top_k=0, top_p=0.9
            )
            check_step(ws, block, cpu_logits, d_logits, dtype, p)


@needs_gpu
def test_ties_break_like_the_cpu():
    """Equal maxima -> lowest index; equal confidences -> lowest position."""
    rows, L, V = 1, 4, VOCAB
    ws = _core.CudaUnmask(max_batch=rows, block_length=L, vocab_size=V, sampling=False)
    logits = np.zeros((rows, L, V), np.float32)
    logits[0, :, [5, 70_000, 151_000]] = 3.0  # three-way tie in every position
    d_logits, cpu_logits = device_logits(logits, "float32")
    rng = np.random.default_rng(3)
    block = Block(rng, rows, L, np.ones((rows, L)))
    check_step(
        ws, block, cpu_logits, d_logits, "float32", params(remasking="low_confidence_static", scheduled=2)
    )
    assert list(block.masked[0]) == [0, 0, 1, 1]
    assert list(block.tokens[0, :2]) == [5, 5]


@needs_gpu
def test_sequential_steps_back_to_back():
    """Sequential greedy steps reuse one workspace with many chunks per position: a step samples
    only the first n_k masked positions, and the next step (after the masks changed) must start
    from clean arrival counters. Every block of a launch reads the masks before the remasking
    writes them (runtime/cuda/greedy_step.cu), so step after step equals the CPU."""
    rows, L = 2, 16
    ws = _core.CudaUnmask(max_batch=rows, block_length=L, vocab_size=VOCAB, sampling=False)
    rng = np.random.default_rng(11)
    for _ in range(3):
        block = Block(rng, rows, L, np.ones((rows, L)))
        for _ in range(L):
            d_logits, cpu_logits = device_logits(random_logits(rng, rows, L, VOCAB), "float32")
            if check_step(ws, block, cpu_logits, d_logits, "float32", params(remasking="sequential")) == 0:
                break
        else:
            pytest.fail("block never finished")


@needs_gpu
def test_bad_arguments_raise():
    ws = _core.CudaUnmask(max_batch=1, block_length=4, vocab_size=1024, sampling=False)
    logits = _core.DeviceArray(4 * 4 * 1024)
    block = Block(np.random.default_rng(0), 1, 4, np.ones((1, 4)))
    with pytest.raises(ValueError, match="sampling"):
        run_step(ws, block, logits, "float32", params(temperature=1.0))
    with pytest.raises(ValueError, match="rows"):
        ws.step(
            logits=logits.ptr,
            tokens=block.d_tokens.ptr,
            tokens_stride=4,
            masked=block.d_masked.ptr,
            masked_stride=4,
            rows=2,
            scheduled=1,
        )
    with pytest.raises(ValueError, match="block_length"):
        _core.CudaUnmask(max_batch=1, block_length=65, vocab_size=1024)
