"""End to end: checkpoint -> sdar-export (fp32 ONNX) -> Generator (ONNX Runtime through the C++ core),
compared token for token with a cache-free decode by the PyTorch model over the whole sequence."""

from __future__ import annotations

import numpy as np
import pytest
from sdar_fixtures import PACKAGED_CHECKPOINT, packaged_artifact, tiny_artifact
from sdar_reference import reference_decode


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from sdar_export.model import build_model, full_sequence_logits
    from sdar_rt import Generator

    ck, art = tiny_artifact(tmp_path_factory)
    model = build_model(ck, dtype="float32")
    gen = Generator(art, threads=1)
    memo: dict[tuple, np.ndarray] = {}

    def logits_fn(visible, position):
        key = tuple(visible)
        if key not in memo:
            ids = torch.tensor([list(visible)], dtype=torch.int64)
            memo[key] = full_sequence_logits(model, ids, gen.spec.block_length)[0].float().numpy()
        return memo[key][position]

    return gen, logits_fn


def ref(gen, prompt, **kw):
    a = gen.artifact
    return reference_decode(
        prompt, L=a.block_length, V=a.model["vocab_size"], mask_id=a.mask_id, eos_ids=a.eos_ids, **kw
    )


CASES = [
    dict(remasking="low_confidence_dynamic", threshold=0.9),
    dict(remasking="low_confidence_dynamic", threshold=0.2),
    dict(remasking="sequential", denoising_steps=2),
    dict(remasking="low_confidence_static", temperature=0.8, top_k=20, top_p=0.9, seed=3),
    # The random network's distributions are nearly flat (entropy ~ log V ~ 6.2 nats): budget 0
    # fills one position per step in entropy order, 14 two or so, 1e9 the whole block.
    dict(remasking="entropy_bounded", eb_threshold=0.0),
    dict(remasking="entropy_bounded", eb_threshold=14.0, denoising_steps=2),
    dict(remasking="entropy_bounded", eb_threshold=1e9),
    dict(remasking="entropy_bounded", eb_threshold=14.0, temperature=0.8, top_k=20, seed=3),
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("n", [8, 13])
def test_tokens_equal_pytorch_reference(setup, case, n):
    gen, logits_fn = setup
    prompt = [int(x) for x in np.random.default_rng(n).integers(0, 500, size=n)]
    fused = gen.generate(prompt_ids=prompt, max_new_tokens=30, **case)
    unfused = gen.generate(prompt_ids=prompt, max_new_tokens=30, fused_commit=False, **case)
    tokens, reason, steps = ref(gen, prompt, max_new_tokens=30, logits_fn=logits_fn, **case)
    assert fused.token_ids == tokens == unfused.token_ids
    assert fused.finish_reason == reason == unfused.finish_reason
    assert fused.stats["steps_per_block"] == steps
    committed = len(steps) - 1
    assert fused.stats["nfe"] == unfused.stats["nfe"] - committed
    assert fused.stats["nfe_fused"] == committed and unfused.stats["nfe_commit"] == committed


def test_text_prompt_with_chat_template(setup):
    gen, logits_fn = setup
    out = gen.generate("What is the capital of France?", max_new_tokens=20)
    ids = gen.tokenizer.encode(
        gen.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    )
    assert ids and out.token_ids == ref(gen, ids, max_new_tokens=20, logits_fn=logits_fn)[0]
    assert out.text == gen.tokenizer.decode(out.token_ids)


@pytest.fixture(scope="module")
def batched_l8(tmp_path_factory):
    """Block length 8, batch 2, MoE network: the other artifact shapes the runtime must handle."""
    torch = pytest.importorskip("torch")
    from sdar_export.model import build_model, full_sequence_logits
    from sdar_rt import Generator

    ck, art = tiny_artifact(tmp_path_factory, block_length=8, batch=2, moe=True)
    model = build_model(ck, dtype="float32")
    gen = Generator(art, threads=1)

    def logits_fn(visible, position):
        ids = torch.tensor([list(visible)], dtype=torch.int64)
        return full_sequence_logits(model, ids, 8)[0].float().numpy()[position]

    return gen, logits_fn


@pytest.mark.parametrize("case", [
    dict(remasking="low_confidence_dynamic", threshold=0.5, denoising_steps=4),
    dict(remasking="low_confidence_static", denoising_steps=8),
])
def test_batched_block8_moe_equals_reference(batched_l8, case):
    gen, logits_fn = batched_l8
    assert gen.spec.block_length == 8 and gen.spec.batch == 2
    rng = np.random.default_rng(5)
    # Two prompts of one length share a batched call; the third (other length) runs in its own call.
    prompts = [[int(x) for x in rng.integers(0, 500, size=n)] for n in (11, 11, 16)]
    outs = gen.generate(prompt_ids=prompts, max_new_tokens=20, **case)
    for row, (prompt, out) in enumerate(zip(prompts, outs, strict=True)):
        tokens, reason, steps = ref(gen, prompt, max_new_tokens=20, logits_fn=logits_fn, row=row, **case)
        assert out.token_ids == tokens
        assert out.finish_reason == reason
    # Each row alone gives the same tokens as inside the batch.
    alone = gen.generate(prompt_ids=prompts[1], max_new_tokens=20, **case)
    assert alone.token_ids == outs[1].token_ids


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """The shipped trained checkpoint (it sorts digits; its distributions are sharp, entropies well
    below 1 nat), exported, with its PyTorch logits for the reference."""
    torch = pytest.importorskip("torch")
    from sdar_export.model import build_model, full_sequence_logits

    art = packaged_artifact(tmp_path_factory)
    model = build_model(PACKAGED_CHECKPOINT, dtype="float32")
    memo: dict[tuple, np.ndarray] = {}

    def logits_fn(visible, position):
        key = tuple(visible)
        if key not in memo:
            ids = torch.tensor([list(visible)], dtype=torch.int64)
            memo[key] = full_sequence_logits(model, ids, 4)[0].float().numpy()
        return memo[key][position]

    return art, logits_fn


@pytest.mark.parametrize("engine", ["cpu", "ort"])
def test_entropy_bounded_on_packaged_checkpoint_equals_reference(packaged, engine):
    from sdar_rt import Generator

    art, logits_fn = packaged
    gen = Generator(art, engine=engine, threads=1)
    steps_seen = set()
    for text in ("sort: 4 1 3 9 7 2", "sort: 8 0 5 5 1"):
        ids = gen.tokenizer.encode(gen.tokenizer.apply_chat_template([{"role": "user", "content": text}]))
        for eb in (0.0, 0.05, 0.35):
            for fused in (True, False):
                kw = dict(remasking="entropy_bounded", eb_threshold=eb)
                out = gen.generate(prompt_ids=ids, max_new_tokens=16, fused_commit=fused, **kw)
                tokens, reason, steps = ref(gen, ids, max_new_tokens=16, logits_fn=logits_fn, **kw)
                assert out.token_ids == tokens and out.finish_reason == reason == "stop"
                assert out.stats["steps_per_block"] == steps
                steps_seen.add((eb, tuple(steps)))
    # the budget changes the steps: one position per step at 0, more per step as it grows
    by_budget = {eb: sum(sum(s) for b, s in steps_seen if b == eb) for eb in (0.0, 0.05, 0.35)}
    assert by_budget[0.0] > by_budget[0.05] > by_budget[0.35]


def test_bench_reference_decoder_entropy_bounded_equals_runtime(packaged):
    """sdar-bench's own PyTorch decoder (what it checks sdar_rt's tokens against) follows the rule too."""
    from sdar_rt import Generator
    from sdar_rt.bench.reference import ReferenceDecoder

    art, _ = packaged
    gen = Generator(art, threads=1)
    a = gen.artifact
    bench_ref = ReferenceDecoder(PACKAGED_CHECKPOINT, block_length=a.block_length, mask_id=a.mask_id,
                                 eos_ids=a.eos_ids)
    messages = [{"role": "user", "content": "sort: 6 2 9 4"}]
    ids = gen.tokenizer.encode(gen.tokenizer.apply_chat_template(messages))
    out = gen.generate(prompt_ids=ids, max_new_tokens=16, remasking="entropy_bounded", fused_commit=False)
    got = bench_ref.generate(ids, max_new_tokens=16, remasking="entropy_bounded")
    assert got["token_ids"][: len(out.token_ids)] == out.token_ids
    assert got["steps_per_block"] == out.stats["steps_per_block"]
