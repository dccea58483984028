"""trt_build drives the TensorRT Python API as documented; checked here with a recording stand-in
for the ``tensorrt`` module (TensorRT cannot be installed on these machines). The stand-in builds
its network inputs from the ONNX graph the parser is given (name, shape with -1 for dynamic axes,
element type), so the checks below see what TensorRT's parser would report."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import onnx
import pytest
from onnx import helper
from sdar_export import cli, trt_build
from sdar_export.errors import ExportError
from sdar_export.make_checkpoint import make_checkpoint

_DT = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", BF16="BF16", INT64="INT64", INT32="INT32",
                            BOOL="BOOL")
_ONNX_TO_TRT = {1: _DT.FLOAT, 10: _DT.HALF, 16: _DT.BF16, 7: _DT.INT64, 6: _DT.INT32, 9: _DT.BOOL}
STRONGLY_TYPED = 5


class Recorder:
    def __init__(self):
        self.flags = []            # create_network flags
        self.builder_flags = []    # config.set_flag calls
        self.profiles = []         # one dict {name: (min, opt, max)} per added profile
        self.shape_inputs = []
        self.inputs = []           # the parsed network's inputs
        self.workspace = None
        self.built = 0


def fake_tensorrt(rec: Recorder, scratch=(3 << 20, 1 << 20, 2 << 20)):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.DataType = _DT

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    class Tensor:
        def __init__(self, vi):
            dims = vi.type.tensor_type.shape.dim
            self.name = vi.name
            self.shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
            self.dtype = _ONNX_TO_TRT[vi.type.tensor_type.elem_type]
            self.is_shape_tensor = False

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
            m = onnx.load(path, load_external_data=False)
            self.network.inputs = [Tensor(i) for i in m.graph.input]
            rec.inputs = self.network.inputs
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        def set_shape_input(self, name, lo, opt, hi):
            rec.shape_inputs.append(name)
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Cache:
        def serialize(self):
            return b"cache"

    class Config:
        def __init__(self):
            self.profiles = 0

        def set_memory_pool_limit(self, pool, n):
            rec.workspace = n

        def set_flag(self, f):
            rec.builder_flags.append(f)

        def create_timing_cache(self, b):
            return Cache()

        def set_timing_cache(self, c, ignore_mismatch):
            pass

        def get_timing_cache(self):
            return Cache()

        def add_optimization_profile(self, p):
            rec.profiles.append(p.shapes)
            self.profiles += 1
            return self.profiles - 1

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.flags.append(flags)
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            rec.built += 1
            return b"PLAN" * 1000

    class Engine:
        num_optimization_profiles = 3

        def get_device_memory_size_for_profile_v2(self, i):
            return scratch[i]

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, buffer):
            assert bytes(buffer[:4]) == b"PLAN"   # the plan on disk, mapped
            return Engine()

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=STRONGLY_TYPED)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16", BF16="bf16")
    return trt


@pytest.fixture(scope="module")
def fp16_art(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt-build")
    ck = make_checkpoint(root / "ck")
    return cli.export(ck, root / "art", dtype="float16", max_context=32, skip_validate=True, quiet=True)


@pytest.fixture
def rec(monkeypatch):
    r = Recorder()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(r))
    monkeypatch.setattr(trt_build, "device_free_memory", lambda: 64 << 30)
    return r


def test_one_strongly_typed_plan_with_a_profile_per_kind(fp16_art, rec):
    art = fp16_art
    assert cli.main([str(art), "--engine", "trt", "--workspace-mb", "512", "-q"]) == 0
    m = json.loads((art / "manifest.json").read_text())
    L, S, B = m["block_length"], m["max_context"], m["batch"]
    chunk = m["prefill_chunk"]
    kvh, D = m["model"]["num_kv_heads"], m["model"]["head_dim"]

    # strongly typed, and no precision flag that would let TensorRT move float32 islands to half
    assert rec.flags == [1 << STRONGLY_TYPED]
    assert rec.builder_flags == []
    assert rec.workspace == 512 << 20
    # one plan, built once, from the trt graph
    assert rec.built == 1
    assert sorted(p.name for p in art.glob("*.plan")) == ["trt.plan"]
    assert (art / "timing.cache").exists()

    # every network input has a profile in every kind, with its own rank and min <= opt <= max
    names = [t.name for t in rec.inputs]
    assert names == list(m["graphs"]["trt"]["inputs"])
    assert len(rec.profiles) == 3
    for profile in rec.profiles:
        assert set(profile) == set(names)
        for t in rec.inputs:
            lo, opt, hi = profile[t.name]
            assert len(lo) == len(opt) == len(hi) == len(t.shape), t.name
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)), (t.name, lo, opt, hi)
            for k, d in enumerate(t.shape):   # static axes of the graph are kept as they are
                if d >= 0:
                    assert lo[k] == opt[k] == hi[k] == d, (t.name, k)
    prefill, decode, fused = rec.profiles
    assert prefill["input_ids"] == ((B, L), (B, chunk), (B, chunk))
    assert decode["input_ids"] == ((B, L),) * 3
    assert fused["input_ids"] == ((B, 2 * L),) * 3
    for profile in rec.profiles:
        assert profile["past_len"] == ((1,), (1,), (1,))   # an int64 [1], not a past K/V
        assert profile["past_key_0"] == ((0, B, kvh, D), (S // 2, B, kvh, D), (S, B, kvh, D))
        assert profile[f"past_value_{m['model']['num_layers'] - 1}"] == profile["past_key_0"]

    # the manifest entry
    (entry,) = [e for e in m["engines"] if e["kind"] == "trt"]
    assert entry["graph"] == "trt" and entry["file"] == "trt.plan" and entry["tensorrt"] == "10.3.0"
    assert entry["profiles"] == {"prefill": 0, "decode": 1, "fused": 2}
    assert entry["prefill_chunk"] == chunk and entry["max_context"] == S and entry["strongly_typed"]
    assert entry["plan_bytes"] == (art / "trt.plan").stat().st_size == 4000
    assert entry["scratch_bytes"] == 3 << 20
    assert entry["scratch_bytes_per_profile"] == {"prefill": 3 << 20, "decode": 1 << 20, "fused": 2 << 20}
    assert {"gpu", "compute_capability"} <= set(entry)

    # rebuilding with another prefill chunk replaces the entry
    assert cli.main([str(art), "--engine", "trt", "--prefill-chunk", "8", "-q"]) == 0
    m = json.loads((art / "manifest.json").read_text())
    assert [e["prefill_chunk"] for e in m["engines"]] == [8]
    assert rec.profiles[3]["input_ids"] == ((B, L), (B, 8), (B, 8))
    assert not (art / "step.plan").exists() and not (art / "decode.plan").exists()


def test_device_memory_budget_refuses_before_building(fp16_art, rec, monkeypatch, capsys):
    monkeypatch.setattr(trt_build, "device_free_memory", lambda: 200_000)
    assert cli.main([str(fp16_art), "--engine", "trt"]) == 2
    err = capsys.readouterr().err
    assert "needs" in err and "GiB free" in err and "weights" in err and "KV cache" in err
    assert "--int4" in err and "nothing was built" in err
    assert rec.built == 0


def test_budget_names_the_context_that_fits(fp16_art, rec, monkeypatch, capsys):
    m = json.loads((fp16_art / "manifest.json").read_text())
    budget = trt_build._check_budget(fp16_art, m, m["prefill_chunk"], log=lambda s: None)
    per_token = budget["kv_cache"] // m["max_context"]
    # room for the weights, the scratch and 12 tokens of cache: --max-context 12 (a multiple of L = 4)
    free = budget["weights"] + budget["scratch_estimate"] + 13 * per_token
    monkeypatch.setattr(trt_build, "device_free_memory", lambda: free)
    with pytest.raises(ExportError, match="--max-context 12 or less"):
        trt_build.build_engines(fp16_art, log=lambda s: None)


def test_bad_prefill_chunk_and_old_artifact(fp16_art, rec, tmp_path):
    with pytest.raises(ExportError, match="multiple of the block length"):
        trt_build.build_engines(fp16_art, prefill_chunk=6, log=lambda s: None)
    old = tmp_path / "old"
    old.mkdir()
    m = json.loads((fp16_art / "manifest.json").read_text())
    del m["graphs"]["trt"]
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ExportError, match="no trt graph.*re-export"):
        trt_build.build_engines(old, log=lambda s: None)


def test_unknown_input_is_refused(fp16_art, rec, tmp_path):
    m = json.loads((fp16_art / "manifest.json").read_text())
    m["graphs"]["trt"]["inputs"]["position_ids"] = {"dtype": "int64", "shape": [1, "new_tokens"]}
    with pytest.raises(ExportError, match="position_ids"):
        trt_build.profile_shapes(m, 8)


def test_graph_outside_the_parser_fails_the_build_naming_the_node(fp16_art, rec, tmp_path):
    import shutil

    art = tmp_path / "art"
    shutil.copytree(fp16_art, art)
    m = onnx.load(str(art / "trt.onnx"))
    x = m.graph.input[0].name
    m.graph.node.append(helper.make_node("Det", [x], ["det_out"], name="my_det"))
    onnx.save(m, str(art / "trt.onnx"))
    with pytest.raises(ExportError, match="'my_det' \\(Det\\)"):
        trt_build.build_engines(art, log=lambda s: None)
    assert rec.built == 0


def test_export_for_trt_fails_with_the_node_named(tmp_path, rec, monkeypatch):
    """An exporter change that gives TensorRT an operator its parser does not document fails the
    export for --engine trt (here: Softmax dropped from the supported list)."""
    from sdar_export import trt_onnx_support

    monkeypatch.delitem(trt_onnx_support.OPS, "Softmax")
    ck = make_checkpoint(tmp_path / "ck")
    with pytest.raises(ExportError, match="node '.*' \\(Softmax\\)"):
        cli.export(ck, tmp_path / "art", max_context=16, skip_validate=True, quiet=True, engine="trt")
    assert not (tmp_path / "art").exists()
    # the same export for ONNX Runtime succeeds (with a note)
    assert cli.export(ck, tmp_path / "art2", max_context=16, skip_validate=True, quiet=True).is_dir()


def test_engine_onnx_on_artifact_is_refused(fp16_art):
    with pytest.raises(Exception, match="already an sdar-export artifact"):
        cli.export(fp16_art, None)


def test_graph_weight_bytes_counts_every_initializer(fp16_art, tmp_path):
    m = onnx.load(str(fp16_art / "trt.onnx"))
    want = sum(np.prod(t.dims, dtype=np.int64) * 2 for t in m.graph.initializer if t.data_type == 10)
    want += sum(np.prod(t.dims, dtype=np.int64) * 4 for t in m.graph.initializer if t.data_type in (1, 6))
    want += sum(np.prod(t.dims, dtype=np.int64) * 8 for t in m.graph.initializer if t.data_type == 7)
    assert trt_build.graph_weight_bytes(fp16_art / "trt.onnx") == want
    # tied embeddings: the head is Transpose(table), and the plan holds the folded transpose too
    ck = make_checkpoint(tmp_path / "tied", seed=4, tie_word_embeddings=True)
    art = cli.export(ck, tmp_path / "art", dtype="float16", max_context=16, skip_validate=True, quiet=True,
                     cpu_engine=False)
    m = onnx.load(str(art / "trt.onnx"), load_external_data=False)
    table = next(t for t in m.graph.initializer if list(t.dims) == [512, 128])
    every = sum(int(np.prod(t.dims, dtype=np.int64)) * {10: 2, 7: 8}.get(t.data_type, 4)
                for t in m.graph.initializer)
    assert trt_build.graph_weight_bytes(art / "trt.onnx") == every + 512 * 128 * 2
    assert table.data_type == 10
