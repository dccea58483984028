"""Choosing where the decoding loop runs: device / engine arguments, the GPU path's refusals on a
machine without a GPU (or a build without CUDA / TensorRT), and TensorRT engine entries."""

from __future__ import annotations

import json
import shutil

import pytest
from sdar_fixtures import tiny_artifact
from sdar_rt import ArtifactError, Generator, _core
from sdar_rt.artifact import load_artifact
from sdar_rt.trt_engine import tensorrt_available, trt_entries

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


def test_trt_engine_entries(art, tmp_path):
    with pytest.raises(ArtifactError, match="no TensorRT engines.*--engine trt"):
        trt_entries(load_artifact(art))
    entry = {"kind": "trt", "graph": "decode", "file": "decode.plan", "gpu": "Orin",
             "compute_capability": "8.7", "tensorrt": "10.3.0"}
    a = with_engines(art, tmp_path / "ok", [entry], plans=["decode.plan"])
    (out,) = trt_entries(a)
    assert out["path"] == str(a.path / "decode.plan") and out["graph"] == "decode"
    assert out["compute_capability"] == "8.7" and out["tensorrt"] == "10.3.0"
    with pytest.raises(ArtifactError, match="decode.plan.*missing.*--engine trt"):
        trt_entries(with_engines(art, tmp_path / "gone", [entry]))
    with pytest.raises(ArtifactError, match="lacks tensorrt"):
        trt_entries(with_engines(art, tmp_path / "bad", [{**entry, "tensorrt": ""}], plans=["decode.plan"]))
