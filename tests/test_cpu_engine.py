"""The native CPU engine end to end: sdar-export writes its weights, the Generator runs it.

* float32, greedy: the tokens equal ONNX Runtime's on the same artifact, token for token, for every
  remasking policy, fused and separate commit, batch 1 and 2 (the shipped task checkpoint and a
  random one). Both engines compute in float32 with different summation orders (export validation:
  ~1e-5 on logits of magnitude ~10); equal tokens is the contract, as for every engine.
* int4 / int8: with float activations the engine is the network with the dequantized weights, so its
  greedy tokens equal the cache-free PyTorch decode of that network. With int8 activations (the
  default, like ONNX Runtime's accuracy level 4) the two engines round activations differently:
  their greedy tokens agree on at least 90% of positions on random weights (whose logits are nearly
  flat, the hardest case), and the task checkpoint is still solved.
* refusals: MoE, fp16, missing / truncated / foreign weight file, damaged manifest entries, kernels
  this CPU lacks, a GPU device.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from sdar_fixtures import tiny_artifact

pytest.importorskip("torch")

from sdar_rt import ArtifactError, Generator, _core  # noqa: E402
from sdar_rt.cpu_engine import make_cpu_engine  # noqa: E402

CKPT = Path(__file__).resolve().parents[1] / "python" / "sdar_rt" / "checkpoints" / "tiny"
STATIC2 = dict(remasking="low_confidence_static", denoising_steps=2)
POLICIES = [
    dict(remasking="sequential"),
    dict(remasking="low_confidence_static", denoising_steps=2),
    dict(remasking="low_confidence_dynamic", threshold=0.9),
    dict(remasking="low_confidence_dynamic", threshold=0.3, denoising_steps=2),
    # entropies: ~6.2 nats per position on the random network, well below 1 on the task checkpoint
    dict(remasking="entropy_bounded", eb_threshold=0.05),
    dict(remasking="entropy_bounded", eb_threshold=14.0),
]


def _pair(art, **kw):
    return Generator(art, engine="cpu", threads=2, **kw), Generator(art, engine="ort", threads=1, **kw)


@pytest.fixture(scope="module")
def random_b2(tmp_path_factory):
    return tiny_artifact(tmp_path_factory, "float32", batch=2)


@pytest.fixture(scope="module")
def task_art(tmp_path_factory):
    from sdar_export.cli import export

    return export(CKPT, tmp_path_factory.mktemp("task") / "art", dtype="float32", quiet=True)


def test_auto_picks_the_cpu_engine_when_the_artifact_has_its_weights(random_b2, tmp_path):
    _, art = random_b2
    gen = Generator(art)
    assert isinstance(gen.engine, _core.CpuEngine) and gen.device == "cpu"
    assert gen.engine.kernels == _core.cpu_kernels_available()[0]
    section = gen.artifact.manifest["cpu_engine"]
    assert section["validation"]["max_abs"]["logits"] < 1e-4
    assert type(Generator(art, engine="ort").engine).__name__ == "OrtEngine"
    stripped = tmp_path / "no-cpu"
    shutil.copytree(art, stripped)
    m = json.loads((stripped / "manifest.json").read_text())
    del m["cpu_engine"]
    (stripped / "manifest.json").write_text(json.dumps(m))
    assert type(Generator(stripped).engine).__name__ == "OrtEngine"


@pytest.mark.parametrize("case", POLICIES)
def test_fp32_greedy_tokens_equal_onnx_runtime_batch2(random_b2, case):
    _, art = random_b2
    cpu, ort = _pair(art)
    rng = np.random.default_rng(7)
    prompts = [[int(t) for t in rng.integers(0, 500, 9)] for _ in range(2)]
    for fused in (True, False):
        a = cpu.generate(prompt_ids=prompts, max_new_tokens=24, fused_commit=fused, **case)
        b = ort.generate(prompt_ids=prompts, max_new_tokens=24, fused_commit=fused, **case)
        assert [o.token_ids for o in a] == [o.token_ids for o in b]
        assert [o.finish_reason for o in a] == [o.finish_reason for o in b]
        assert a[0].stats["nfe"] == b[0].stats["nfe"]
        single = cpu.generate(prompt_ids=prompts[1], max_new_tokens=24, fused_commit=fused, **case)
        assert single.token_ids == a[1].token_ids   # batch rows equal the row decoded alone


@pytest.mark.parametrize("case", POLICIES)
def test_fp32_greedy_tokens_equal_onnx_runtime_task_checkpoint(task_art, case):
    from sdar_export.tiny_task import task as T

    cpu, ort = _pair(task_art)
    for digits in T.heldout_set()[:12]:
        prompt = "sort: " + " ".join(str(x) for x in digits)
        for fused in (True, False):
            a = cpu.generate(prompt, max_new_tokens=16, fused_commit=fused, **case)
            b = ort.generate(prompt, max_new_tokens=16, fused_commit=fused, **case)
            assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
            assert a.stats["nfe"] == b.stats["nfe"]


@pytest.mark.parametrize("case", POLICIES)
def test_host_sampling_on_the_engine_threads_changes_no_token(random_b2, case):
    # With 2 threads the CPU engine also samples a step's positions on its pool; its logits do not
    # depend on the thread count, so every token, greedy or sampled, must equal the 1-thread run.
    _, art = random_b2
    one = Generator(art, engine=make_cpu_engine(Generator(art, engine="ort").artifact, threads=1))
    two = Generator(art, engine=make_cpu_engine(one.artifact, threads=2))
    prompts = [[5, 17, 33, 2, 90, 41, 7], [300, 12, 8, 77, 150, 3, 64]]
    for kw in (dict(), dict(temperature=0.9, top_k=40, top_p=0.95, seed=3)):
        a = one.generate(prompt_ids=prompts, max_new_tokens=20, **case, **kw)
        b = two.generate(prompt_ids=prompts, max_new_tokens=20, **case, **kw)
        assert [o.token_ids for o in a] == [o.token_ids for o in b]
        assert a[0].stats["steps_per_block"] == b[0].stats["steps_per_block"]


def test_sampling_is_engine_independent(task_art):
    cpu, ort = _pair(task_art)
    kw = dict(temperature=0.7, top_k=8, top_p=0.9, seed=11, max_new_tokens=16)
    assert cpu.generate("sort: 4 1 3", **kw).token_ids == ort.generate("sort: 4 1 3", **kw).token_ids


def test_task_checkpoint_is_solved(task_art):
    from sdar_export.tiny_task import task as T

    gen = Generator(task_art, engine="cpu", threads=2)
    digits = T.heldout_set()[:60]
    ok = 0
    for d in digits:
        out = gen.generate("sort: " + " ".join(str(x) for x in d), max_new_tokens=16, threshold=0.9)
        ok += T.is_correct(d, out.token_ids) and out.finish_reason == "stop"
    assert ok >= 0.95 * len(digits)


# ----------------------------------------------------------------------------------- quantized


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """(checkpoint, {name: artifact}) for int4 sym (group 32, 4-bit head), int4 asym (group 64), int8."""
    from sdar_export.cli import export

    ck, _ = tiny_artifact(tmp_path_factory, "float32")
    root = tmp_path_factory.mktemp("quantized")
    arts = {
        "int4-sym": export(ck, root / "a", quantize="int4", group_size=32, lm_head_bits=4, max_context=128,
                           quiet=True),
        "int4-asym": export(ck, root / "b", quantize="int4", group_size=64, symmetric=False, max_context=128,
                            quiet=True),
        "int8": export(ck, root / "c", quantize="int8", max_context=128, quiet=True),
    }
    return ck, arts


@pytest.mark.parametrize("name", ["int4-sym", "int4-asym", "int8"])
def test_quantized_float_activations_equal_the_dequantized_network(quantized, name):
    """Float activations: the engine is the dequantized network; its tokens equal the cache-free PyTorch
    decode of that network (export validation checked the same at the float32 tolerance)."""
    import torch
    from sdar_export.checkpoint import load_checkpoint
    from sdar_export.model import SDARModel, full_sequence_logits
    from sdar_export.quantize import make_scheme, quantize_weights
    from sdar_reference import reference_decode

    ck, arts = quantized
    art = arts[name]
    q = json.loads((art / "manifest.json").read_text())["quantization"]
    scheme = make_scheme(q["weights"], q["group_size"] if q["weights"] == "int4" else None, q["symmetric"],
                         lm_head_bits=4 if q["lm_head"] == "int4" else None)
    c = load_checkpoint(ck, dtype="float32")
    weights, _ = quantize_weights(c.weights, c.config, scheme, "float32")
    model = SDARModel(c.config, weights).eval()
    gen = Generator(art, engine=make_cpu_engine(Generator(art, engine="ort").artifact, threads=2,
                                                 activations="float"))
    a = gen.artifact

    def logits_fn(visible, position):
        ids = torch.tensor([list(visible)], dtype=torch.int64)
        return full_sequence_logits(model, ids, a.block_length)[0, position].float().numpy()

    for seed in (1, 2):
        prompt = [int(t) for t in np.random.default_rng(seed).integers(0, 500, 7)]
        out = gen.generate(prompt_ids=prompt, max_new_tokens=16, **STATIC2)
        tokens, _, _ = reference_decode(prompt, L=a.block_length, V=a.model["vocab_size"], mask_id=a.mask_id,
                                        eos_ids=a.eos_ids, max_new_tokens=16, logits_fn=logits_fn,
                                        remasking="low_confidence_static", denoising_steps=2)
        assert out.token_ids == tokens


@pytest.mark.parametrize("name", ["int4-sym", "int4-asym", "int8"])
def test_quantized_int8_activations_agree_with_onnx_runtime(quantized, name):
    _, arts = quantized
    cpu, ort = _pair(arts[name])
    assert isinstance(Generator(arts[name]).engine, _core.CpuEngine)
    same = total = 0
    for seed in range(6):
        prompt = [int(t) for t in np.random.default_rng(seed).integers(0, 500, 7)]
        a = cpu.generate(prompt_ids=prompt, max_new_tokens=16, **STATIC2)
        b = ort.generate(prompt_ids=prompt, max_new_tokens=16, **STATIC2)
        same += sum(x == y for x, y in zip(a.token_ids, b.token_ids, strict=False))
        total += max(len(a.token_ids), len(b.token_ids))
    assert same >= 0.9 * total, (same, total)


def test_int4_task_checkpoint_is_solved(tmp_path):
    from sdar_export.cli import export
    from sdar_export.tiny_task import task as T

    art = export(CKPT, tmp_path / "art", quantize="int4", lm_head_bits=4, quiet=True)
    gen = Generator(art)
    assert isinstance(gen.engine, _core.CpuEngine)
    digits = T.heldout_set()[:60]
    ok = 0
    for d in digits:
        out = gen.generate("sort: " + " ".join(map(str, d)), max_new_tokens=16)
        ok += T.is_correct(d, out.token_ids) and out.finish_reason == "stop"
    assert ok >= 0.95 * len(digits)


# ----------------------------------------------------------------------------------- refusals


def test_moe_and_fp16_artifacts_have_no_cpu_engine(tmp_path_factory):
    _, moe = tiny_artifact(tmp_path_factory, "float32", moe=True)
    assert "cpu_engine" not in json.loads((moe / "manifest.json").read_text())
    with pytest.raises(ArtifactError, match="dense models.*MoE"):
        Generator(moe, engine="cpu")
    assert type(Generator(moe).engine).__name__ == "OrtEngine"
    _, fp16 = tiny_artifact(tmp_path_factory, "float16")
    with pytest.raises(ArtifactError, match="float32 K/V cache.*float16 artifact"):
        Generator(fp16, engine="cpu")
    assert type(Generator(fp16).engine).__name__ == "OrtEngine"


def _copy(art, tmp_path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(art, out)
    return out


def test_missing_truncated_and_foreign_weight_files(random_b2, tmp_path):
    _, art = random_b2
    bad = _copy(art, tmp_path)
    weights = bad / "cpu_weights.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or replaced"):
        Generator(bad, engine="cpu")
    weights.write_bytes(b"GGUF" + data[4:])
    with pytest.raises(ArtifactError, match="not a CPU engine weight file"):
        Generator(bad, engine="cpu")
    weights.unlink()
    with pytest.raises(ArtifactError, match="weight file 'cpu_weights.bin' is missing"):
        Generator(bad, engine="cpu")
    assert type(Generator(bad).engine).__name__ == "OrtEngine"   # auto falls back


def test_damaged_manifest_entries_are_refused(random_b2, tmp_path):
    _, art = random_b2
    bad = _copy(art, tmp_path)
    m = json.loads((bad / "manifest.json").read_text())
    t = m["cpu_engine"]["tensors"]
    t["layers.0.qkv"]["data"][1] -= 64
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="layers.0.qkv.*bytes, its shape needs"):
        Generator(bad, engine="cpu")
    t["layers.0.qkv"]["data"][1] += 64
    t["layers.0.qkv"]["data"][0] = 1 << 40
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="lies outside the file"):
        Generator(bad, engine="cpu")
    del t["final_norm"]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="'final_norm' is missing"):
        Generator(bad, engine="cpu")
    m["cpu_engine"]["format_version"] = 99
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="format version 99"):
        Generator(bad, engine="cpu")


def test_bad_engine_options(random_b2):
    _, art = random_b2
    a = Generator(art, engine="ort").artifact
    with pytest.raises(ValueError, match="cpu.*host"):
        Generator(art, engine="cpu", device="cuda")
    with pytest.raises(ValueError, match="activations"):
        make_cpu_engine(a, activations="int4")
    with pytest.raises(ValueError, match="unknown CPU kernels"):
        make_cpu_engine(a, kernels="sse9")
    missing = [k for k in ("avx512vnni", "avx2", "neon") if k not in _core.cpu_kernels_available()]
    with pytest.raises(ValueError, match="cannot run here"):
        make_cpu_engine(a, kernels=missing[0])
    with pytest.raises(ValueError, match="threads"):
        make_cpu_engine(a, threads=-1)


def test_every_kernel_table_gives_the_same_tokens(random_b2):
    """The portable kernels (what a CPU without AVX2 runs) against the fastest, float32: same tokens."""
    _, art = random_b2
    a = Generator(art, engine="ort").artifact
    prompt = [int(t) for t in np.random.default_rng(3).integers(0, 500, 9)]
    outs = set()
    for kernels in _core.cpu_kernels_available():
        gen = Generator(art, engine=make_cpu_engine(a, threads=2, kernels=kernels))
        outs.add(tuple(gen.generate(prompt_ids=prompt, max_new_tokens=16).token_ids))
    assert len(outs) == 1
