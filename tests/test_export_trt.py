"""trt_build drives the TensorRT Python API as documented; checked here with a recording stand-in
for the ``tensorrt`` module (TensorRT cannot be installed on these machines)."""

from __future__ import annotations

import json
import sys
import types

import pytest
from sdar_export import cli
from sdar_export.make_checkpoint import make_checkpoint


class _Rec:
    calls: list = []


def _fake_tensorrt():
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class _Tensor:
        def __init__(self, name):
            self.name = name

    class Network:
        def __init__(self):
            self.inputs = []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            import onnx

            m = onnx.load(path, load_external_data=False)
            self.network.inputs = [_Tensor(i.name) for i in m.graph.input]
            _Rec.calls.append(("parse", path))
            return True

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            _Rec.calls.append(("profile", name, lo, opt, hi))

    class Cache:
        def serialize(self):
            return b"cache"

    class Config:
        def set_memory_pool_limit(self, pool, n):
            _Rec.calls.append(("workspace", n))

        def set_flag(self, f):
            _Rec.calls.append(("flag", f))

        def create_timing_cache(self, b):
            return Cache()

        def set_timing_cache(self, c, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return Cache()

        def add_optimization_profile(self, p):
            pass

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"PLAN"

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace()
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", BF16="bf16")
    return trt


def test_build_engines_from_artifact(tmp_path, monkeypatch):
    ck = make_checkpoint(tmp_path / "ck")
    art = cli.export(ck, tmp_path / "art", dtype="float16", max_context=32, skip_validate=True, quiet=True)
    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    _Rec.calls = []
    assert cli.main([str(art), "--engine", "trt", "--workspace-mb", "512", "-q"]) == 0
    for g in ("prefill", "decode", "fused"):
        assert (art / f"{g}.plan").read_bytes() == b"PLAN"
    assert (art / "timing.cache").exists()
    m = json.loads((art / "manifest.json").read_text())
    assert [(e["kind"], e["graph"], e["file"], e["tensorrt"]) for e in m["engines"]] == [
        ("trt", g, f"{g}.plan", "10.3.0") for g in ("prefill", "decode", "fused")]
    assert {"gpu", "compute_capability"} <= set(m["engines"][0])
    assert ("flag", "fp16") in _Rec.calls and ("workspace", 512 << 20) in _Rec.calls
    prof = {c[1]: c[2:] for c in _Rec.calls if c[0] == "profile"}
    assert prof["past_key_0"] == ((0, 1, 2, 32), (16, 1, 2, 32), (32, 1, 2, 32))
    ids = [c[2:] for c in _Rec.calls if c[0] == "profile" and c[1] == "input_ids"]
    assert ids == [((1, 4), (1, 32), (1, 32)),      # prefill: T in [L, prefill_chunk]
                   ((1, 4), (1, 4), (1, 4)), ((1, 8), (1, 8), (1, 8))]
    # rebuilding replaces entries instead of duplicating them
    assert cli.main([str(art), "--engine", "trt", "-q"]) == 0
    assert len(json.loads((art / "manifest.json").read_text())["engines"]) == 3
    assert not (art / "step.plan").exists()   # the ONNX Runtime-only step graph is not built


def test_engine_onnx_on_artifact_is_refused(tmp_path):
    ck = make_checkpoint(tmp_path / "ck")
    art = cli.export(ck, tmp_path / "art", max_context=16, skip_validate=True, quiet=True)
    with pytest.raises(Exception, match="already an sdar-export artifact"):
        cli.export(art, None)
