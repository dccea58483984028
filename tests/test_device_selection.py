"""Choosing where the decoding loop runs: device / engine arguments, the GPU path's refusals on a
machine without a GPU (or a build without CUDA / TensorRT), ONNX Runtime's refusal of
device='cuda', TensorRT plan entries and the device-memory budget checked before a plan loads."""

from __future__ import annotations

import json
import shutil

import pytest
from sdar_fixtures import tiny_artifact
from sdar_rt import ArtifactError, Generator, _core, trt_engine
from sdar_rt import memory_budget as mb
from sdar_rt.artifact import load_artifact
from sdar_rt.trt_engine import device_memory_budget, tensorrt_available, trt_plan

HAVE_GPU = bool(_core.build_info()["cuda"]) and _core.cuda_device_count() > 0


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifact(tmp_path_factory)[1]


class NullEngine(_core.Engine):
    """Records its bindings; never asked to run in these tests."""

    def __init__(self):
        super().__init__()
        self.bindings = None

    def bind(self, b):
        self.bindings = b

    def run(self, kind, past_len, tokens):  # pragma: no cover - not reached
        raise AssertionError("not expected to run")


def spec_for(art):
    a = load_artifact(art)
    m = a.model
    return _core.ModelSpec(num_layers=m["num_layers"], num_kv_heads=m["num_kv_heads"], head_dim=m["head_dim"],
                           vocab_size=m["vocab_size"], block_length=a.block_length, max_context=a.max_context,
                           mask_id=a.mask_id)


def test_host_bindings_have_no_stream(art):
    engine = NullEngine()
    _core.Generator(spec_for(art), engine)
    assert engine.bindings.device_memory is False and engine.bindings.stream == 0
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        _core.Generator(spec_for(art), NullEngine(), device="tpu")


def test_cuda_device_without_gpu_or_with_one(art):
    engine = NullEngine()
    if HAVE_GPU:  # the GPU path binds device memory and its stream
        _core.Generator(spec_for(art), engine, device="cuda")
        assert engine.bindings.device_memory is True and engine.bindings.stream != 0
        return
    # No GPU (or no CUDA in this build): a clear error that names the problem and the way out.
    with pytest.raises(RuntimeError, match=r"(GPU|CUDA).*(device='cpu'|engine \(ort\)|ort)"):
        _core.Generator(spec_for(art), engine, device="cuda")
    with pytest.raises(RuntimeError, match="GPU|CUDA"):
        Generator(art, engine=NullEngine(), device="cuda")


def test_device_and_engine_arguments(art):
    with pytest.raises(ValueError, match="device must be"):
        Generator(art, device="gpu")
    with pytest.raises(ValueError, match="device='cuda'"):
        Generator(art, engine="trt", device="cpu")
    gen = Generator(art, threads=1)  # auto without TensorRT plans: the CPU engine's weights are there
    assert gen.device == "cpu" and type(gen.engine).__name__ == "CpuEngine"
    gen = Generator(art, engine="ort", threads=1)  # ONNX Runtime, host loop
    assert gen.device == "cpu" and type(gen.engine).__name__ == "OrtEngine"
    # ONNX Runtime would copy the KV cache to the GPU and back every step: refused, with the way out
    for engine in ("ort", "auto"):
        with pytest.raises(ValueError, match="device='cuda' is not available with ONNX Runtime.*engine trt"):
            Generator(art, engine=engine, device="cuda")
    if not tensorrt_available():
        with pytest.raises(RuntimeError, match="TensorRT.*engine='ort'"):
            Generator(art, engine="trt")


def with_engines(art, tmp_path, engines, plans=()):
    dst = tmp_path / "art"
    shutil.copytree(art, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["engines"] = engines
    (dst / "manifest.json").write_text(json.dumps(manifest))
    for name in plans:
        (dst / name).write_bytes(b"plan")
    return load_artifact(dst)


PLAN = {"kind": "trt", "graph": "trt", "file": "trt.plan", "gpu": "Orin", "compute_capability": "8.7",
        "tensorrt": "10.3.0", "profiles": {"prefill": 0, "decode": 1, "fused": 2}, "prefill_chunk": 8,
        "plan_bytes": 3 << 30, "scratch_bytes": 100 << 20}


def test_trt_plan_entry(art, tmp_path):
    with pytest.raises(ArtifactError, match="no TensorRT plan.*--engine trt"):
        trt_plan(load_artifact(art))
    a = with_engines(art, tmp_path / "ok", [PLAN], plans=["trt.plan"])
    out = trt_plan(a)
    assert out["path"] == str(a.path / "trt.plan") and out["profiles"]["decode"] == 1
    assert out["compute_capability"] == "8.7" and out["tensorrt"] == "10.3.0"
    with pytest.raises(ArtifactError, match="trt.plan.*missing.*--engine trt"):
        trt_plan(with_engines(art, tmp_path / "gone", [PLAN]))
    with pytest.raises(ArtifactError, match="lacks tensorrt"):
        trt_plan(with_engines(art, tmp_path / "bad", [{**PLAN, "tensorrt": ""}], plans=["trt.plan"]))
    with pytest.raises(ArtifactError, match="lists 2 TensorRT plans"):
        trt_plan(with_engines(art, tmp_path / "two", [PLAN, PLAN], plans=["trt.plan"]))
    with pytest.raises(ArtifactError, match="no prefill and decode profiles"):
        trt_plan(with_engines(art, tmp_path / "prof", [{**PLAN, "profiles": {"decode": 0}}],
                              plans=["trt.plan"]))


def test_device_memory_budget_of_a_plan(art, tmp_path, monkeypatch):
    a = with_engines(art, tmp_path / "budget", [PLAN], plans=["trt.plan"])
    m = a.model
    b = device_memory_budget(a)
    kv = a.max_context * m["num_layers"] * 2 * a.batch * m["num_kv_heads"] * m["head_dim"] * 4   # float32
    assert b.weights == 3 << 30 and b.kv_cache == kv
    assert b.scratch == (100 << 20) + mb.loop_buffer_bytes(a.batch, a.block_length, m["vocab_size"],
                                                           a.max_context, 8)
    # a GPU with less free memory than that: refused with both numbers and the fixes, before loading
    monkeypatch.setattr(trt_engine._core, "cuda_memory_info", lambda: (2 << 30, 8 << 30), raising=False)
    monkeypatch.setattr(trt_engine._core, "cuda_device_count", lambda: 1, raising=False)
    with pytest.raises(MemoryError, match=r"needs 3\.\d\d GiB .* 2\.00 GiB free.*--int4"):
        trt_engine.check_device_memory(a, trt_plan(a))
    monkeypatch.setattr(trt_engine._core, "cuda_memory_info", lambda: (8 << 30, 8 << 30), raising=False)
    assert trt_engine.check_device_memory(a, trt_plan(a)).total == b.total


class PlanLimitedEngine(NullEngine):
    """Stands in for TensorRT's engine where only its prefill profile matters."""

    max_prefill_tokens = 8


def test_prefill_chunk_follows_the_plan_profile(art):
    gen = Generator(art, engine=PlanLimitedEngine())   # the manifest asks for larger chunks
    assert load_artifact(art).manifest["prefill_chunk"] > 8 and gen.spec.prefill_chunk == 8
    assert Generator(art, engine=PlanLimitedEngine(), prefill_chunk=4).spec.prefill_chunk == 4
    with pytest.raises(ValueError, match="prefill profile \\(8 tokens.*--engine trt --prefill-chunk 16"):
        Generator(art, engine=PlanLimitedEngine(), prefill_chunk=16)
