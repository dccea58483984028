"""The GPU decoding loop at the real SDAR vocabulary (151,936): a random checkpoint of the tiny
shape but with the released vocabulary, run by the C++ core's device loop with the torch step
engine on the GPU, against the CPU path (ONNX Runtime on CPU, host loop) on the same artifact.

The shipped checkpoint (tests/test_torch_engine.py) has a 16-token vocabulary, so only this test
drives the device loop's unmasking kernels over a real-size logits row end to end.

Tolerance: both sides run the same fp32 network (the ONNX graphs are traced from SDARModel), so
logits agree to float32 rounding, ~1e-6 relative. The random weights spread logits with std ~3
over 151,936 entries: the top-2 gap of such a row is ~0.6 on average, and a gap under 1e-5 (the
only way rounding can flip an argmax) has a chance of about 2e-5 per position, ~1e-3 over the
~100 positions decoded here. Sampled draws use the same seeded Philox uniforms on both sides and
flip only when a uniform falls within ~1e-6 of a cumulative-probability boundary. So tokens must
be identical, and the forward-pass schedule (NFE per kind, steps per block) with them.
Skipped visibly ("no CUDA GPU") where there is no GPU; `tests/gpu/check.sh` runs it on one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sdar_export.cli")

from sdar_rt import Generator, _core  # noqa: E402
from torch_step_engine import TorchStepEngine  # noqa: E402

VOCAB = 151_936
MAX_NEW = 24
CASES = [
    dict(remasking="low_confidence_dynamic", threshold=0.9),
    dict(remasking="low_confidence_static", denoising_steps=2),
    dict(remasking="sequential", denoising_steps=4),
    dict(remasking="low_confidence_dynamic", threshold=0.5, temperature=1.0, top_k=50, top_p=0.9, seed=5),
]
CASE_IDS = ["dynamic", "static", "sequential", "sampled"]


def _gpu_reason() -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU (torch sees none)"
    if not _core.build_info().get("cuda"):
        return "no CUDA GPU path (sdar_rt was built without CUDA)"
    if _core.cuda_device_count() == 0:
        return "no CUDA GPU (the sdar_rt core sees none)"
    return None


GPU_REASON = _gpu_reason()
pytestmark = pytest.mark.skipif(GPU_REASON is not None, reason=GPU_REASON or "")


@pytest.fixture(scope="module")
def large_vocab(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, fp32 artifact) of a random tiny-shape checkpoint with the released vocabulary."""
    from sdar_export.cli import export
    from sdar_export.make_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("large-vocab")
    ckpt = make_checkpoint(root / "ck", preset="tiny", seed=3, vocab_size=VOCAB)
    art = export(ckpt, root / "art", dtype="float32", max_context=128, quiet=True)
    return ckpt, Path(art)


def prompts(mask_id: int) -> list[list[int]]:
    """Prompts of several lengths (whole blocks and partial ones), ids spread over the vocabulary."""
    rng = np.random.default_rng(7)
    out = []
    for length in (3, 4, 9, 14):
        ids = rng.integers(0, VOCAB - 1, size=length)
        out.append([int(i) if i != mask_id else int(i) - 1 for i in ids])
    return out


def decode_all(gen: Generator, case: dict, fused: bool) -> list:
    return [
        gen.generate(prompt_ids=p, max_new_tokens=MAX_NEW, fused_commit=fused, **case)
        for p in prompts(gen.artifact.mask_id)
    ]


def assert_same(outs, refs) -> None:
    for i, (out, ref) in enumerate(zip(outs, refs, strict=True)):
        assert out.token_ids == ref.token_ids, f"prompt {i}"
        assert out.finish_reason == ref.finish_reason, f"prompt {i}"
        for key in ("nfe_prefill", "nfe_denoise", "nfe_commit", "nfe_fused", "steps_per_block"):
            assert out.stats[key] == ref.stats[key], f"prompt {i}: {key}"


@pytest.fixture(scope="module")
def generators(large_vocab) -> tuple[Generator, Generator]:
    """(CPU path: ONNX Runtime + host loop, GPU path: torch engine + device loop) on one artifact."""
    ckpt, art = large_vocab
    gpu = Generator(art, engine=TorchStepEngine(ckpt, device="cuda"), device="cuda")
    assert gpu._core.bindings.device_memory  # the device loop really runs on device buffers
    return Generator(art, engine="ort"), gpu


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_device_loop_equals_cpu_at_real_vocabulary(generators, case, fused):
    cpu, gpu = generators
    outs = decode_all(gpu, case, fused)
    assert sum(len(o.token_ids) for o in outs) > 0
    assert_same(outs, decode_all(cpu, case, fused))
