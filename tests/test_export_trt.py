"""trt_build drives the TensorRT Python API as documented; checked here with a recording stand-in
for the ``tensorrt`` module (tests/trt_fake.py: TensorRT cannot be installed on these machines)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from sdar_export import cli, trt_build
from sdar_export.errors import ExportError
from sdar_export.make_checkpoint import make_checkpoint
from sdar_rt import memory_budget as mb
from trt_fake import PLAN, STRONGLY_TYPED, Recorder, fake_tensorrt

ROOT = Path(__file__).resolve().parents[1]
DISCRETE = {"gpu": "NVIDIA H100", "compute_capability": "9.0", "integrated": False}
ORIN = {"gpu": "Orin", "compute_capability": "8.7", "integrated": True}


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
    monkeypatch.setattr(trt_build, "gpu_info", lambda: dict(DISCRETE))
    monkeypatch.setattr(mb, "host_memory", lambda: (64 << 30, 0))
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
    assert rec.builder_flags == set()   # TF32 (on by default) cleared: float32 stays float32
    assert rec.workspace == 512 << 20
    # one plan, built once, from the trt graph
    assert rec.built == 1
    assert sorted(p.name for p in art.glob("*.plan")) == ["trt.plan"]
    assert (art / "timing-10.3.0.cache").read_bytes() == b"cache-10.3.0"
    assert rec.parsers_alive_at_load == 0   # the parser's copy of the weights went before the load

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
    budget = trt_build._check_budget(fp16_art, m, m["prefill_chunk"], 1024, False, False, log=lambda s: None)
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
    art = _copy(fp16_art, tmp_path)
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


# ------------------------------------------------------------------ the on-device install


def _copy(art, tmp_path):
    """A copy of the artifact without what earlier builds left in it (timing caches)."""
    copy = tmp_path / "art"
    shutil.copytree(art, copy)
    for cache in copy.glob("timing*.cache"):
        cache.unlink()
    return copy


def _install_modules(extras: tuple[str, ...]) -> set[str]:
    """Top-level modules of the base install plus ``extras`` (pyproject.toml's requirements and,
    transitively, theirs as installed here), the standard library and the two packages."""
    tomllib = pytest.importorskip("tomllib")
    from importlib import metadata

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    todo = list(project["dependencies"]) + [r for e in extras for r in project["optional-dependencies"][e]]
    dists: set[str] = set()
    while todo:
        req = Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in dists:
            continue
        dists.add(name)
        todo += metadata.requires(req.name) or []
    modules = {m for m, owners in metadata.packages_distributions().items()
               if any(o.lower().replace("_", "-") in dists for o in owners)}
    return modules | set(sys.stdlib_module_names) | {"sdar_rt", "sdar_export", "trt_fake", "tensorrt"}


def _build_in_install(art, extras: tuple[str, ...], tmp_path):
    allowed = tmp_path / "allowed.json"
    allowed.write_text(json.dumps(sorted(_install_modules(extras))))
    tests = ROOT / "tests"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(tests / "trt_build_child.py"), str(art), str(allowed)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_engine_build_needs_only_the_trt_extra(fp16_art, tmp_path):
    """`sdar-export ART --engine trt` where only the base install, the trt extra (and TensorRT) are:
    no torch, safetensors or anything of the export extra."""
    art = _copy(fp16_art, tmp_path)
    modules = _install_modules(("trt",))
    assert "onnx" in modules and "torch" not in modules and "safetensors" not in modules
    done = _build_in_install(art, ("trt",), tmp_path)
    assert done.returncode == 0, done.stderr
    assert (art / "trt.plan").read_bytes() == PLAN


def test_engine_build_without_onnx_names_the_extra_in_one_line(fp16_art, tmp_path):
    art = _copy(fp16_art, tmp_path)
    before = (art / "manifest.json").read_text()
    done = _build_in_install(art, (), tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "sdar_rt[trt]"' in lines[0], done.stderr
    assert (art / "manifest.json").read_text() == before


# ------------------------------------------------------------------ corners of the TensorRT API


def test_shape_tensor_input_is_refused(fp16_art, rec):
    """The runtime binds past_len as a device tensor: a plan where TensorRT made it a shape tensor
    (a host value) would read garbage, so the build refuses it."""
    rec.shape_tensor_names = {"past_len"}
    with pytest.raises(ExportError, match="'past_len'.*shape tensor"):
        trt_build.build_engines(fp16_art, log=lambda s: None)
    assert rec.built == 0 and rec.shape_inputs == []


def test_missing_timing_cache_is_a_note_and_the_manifest_is_fresh(fp16_art, rec, tmp_path):
    art = _copy(fp16_art, tmp_path)
    rec.cache_available = False   # get_timing_cache() -> None
    notes = []
    entry = trt_build.build_engines(art, prefill_chunk=8, log=notes.append)
    assert any("no timing cache" in n for n in notes)
    m = json.loads((art / "manifest.json").read_text())
    assert [e["prefill_chunk"] for e in m["engines"]] == [8] == [entry["prefill_chunk"]]
    assert not list(art.glob("timing*.cache"))


def test_refused_timing_cache_builds_from_an_empty_one(fp16_art, rec, tmp_path):
    art = _copy(fp16_art, tmp_path)
    (art / "timing-10.3.0.cache").write_bytes(b"corrupt")
    rec.accept_cache = False   # set_timing_cache() -> False for every cache
    notes = []
    trt_build.build_engines(art, log=notes.append)
    assert rec.cache_blobs == [b"corrupt", b""]
    assert any("refused the timing cache" in n for n in notes)
    assert rec.built == 1


def test_timing_cache_of_another_tensorrt_is_not_used(fp16_art, rec, tmp_path):
    art = _copy(fp16_art, tmp_path)
    (art / "timing-10.2.0.cache").write_bytes(b"cache-10.2.0")
    trt_build.build_engines(art, log=lambda s: None)
    assert rec.cache_blobs == [b""]
    assert sorted(p.name for p in art.glob("timing*.cache")) == ["timing-10.3.0.cache"]
    trt_build.build_engines(art, log=lambda s: None)   # the same version's cache is used
    assert rec.cache_blobs == [b"", b"cache-10.3.0"]


def test_failed_build_leaves_plan_and_manifest_as_they_were(fp16_art, rec, tmp_path):
    art = _copy(fp16_art, tmp_path)
    trt_build.build_engines(art, log=lambda s: None)
    before = (art / "manifest.json").read_text()
    rec.fail_build = True
    with pytest.raises(ExportError, match="failed to build"):
        trt_build.build_engines(art, prefill_chunk=8, log=lambda s: None)
    assert (art / "manifest.json").read_text() == before
    assert (art / "trt.plan").read_bytes() == PLAN
    assert not list(art.glob("*.tmp"))


def test_stream_writer_writes_the_plan(fp16_art, rec, tmp_path):
    art = _copy(fp16_art, tmp_path)
    rec.stream_writer = True
    sys.modules["tensorrt"] = fake_tensorrt(rec)
    trt_build.build_engines(art, log=lambda s: None)
    assert (art / "trt.plan").read_bytes() == PLAN and rec.parsers_alive_at_load == 0


def test_int4_needs_a_float16_artifact(fp16_art, rec, tmp_path):
    """TensorRT's weight-only INT4 is W4A16: a float32 (or bfloat16, whose graph computes in
    float32) int4 artifact is refused before anything is built."""
    art = _copy(fp16_art, tmp_path)
    m = json.loads((art / "manifest.json").read_text())
    m["quantization"] = {"weights": "int4", "bits": 4, "format": "QDQ", "group_size": 16}
    for dtype in ("float32", "bfloat16"):
        m["dtype"] = dtype
        (art / "manifest.json").write_text(json.dumps(m))
        with pytest.raises(ExportError, match="W4A16.*--fp16 --int4"):
            trt_build.build_engines(art, log=lambda s: None)
    assert rec.built == 0


def test_int4_export_for_trt_in_float32_is_refused_before_the_export(tmp_path, rec):
    ck = make_checkpoint(tmp_path / "ck")
    with pytest.raises(ExportError, match="W4A16"):
        cli.export(ck, tmp_path / "art", dtype="float32", quantize="int4", group_size=16, max_context=16,
                   skip_validate=True, quiet=True, engine="trt")
    assert not (tmp_path / "art").exists()


# ------------------------------------------------------------------ memory on an integrated GPU


def _weights(art) -> int:
    return trt_build.graph_weight_bytes(art / "trt.onnx")


def test_integrated_gpu_budgets_the_build_peak(fp16_art, rec, monkeypatch):
    """On an integrated GPU the build holds the parser's weights, the engine's and the serialized
    plan at once (TensorRT 10.3: no stream writer): a board whose RAM holds the steady state but
    not that peak is refused before anything is built, naming the fixes; swap lets the host copies
    go; the fixes are right."""
    monkeypatch.setattr(trt_build, "gpu_info", lambda: dict(ORIN))
    w, workspace = _weights(fp16_art), 64 << 20
    m = json.loads((fp16_art / "manifest.json").read_text())
    steady = trt_build._check_budget(fp16_art, m, m["prefill_chunk"], 64, False, False, log=lambda s: None)
    run_total = steady["weights"] + steady["kv_cache"] + steady["scratch_estimate"]
    peak = 3 * w + workspace
    assert steady["build_peak"] == peak
    ram = max(run_total, w + workspace) + (peak - max(run_total, w + workspace)) // 2   # between the two
    monkeypatch.setattr(mb, "host_memory", lambda: (ram, 0))
    with pytest.raises(ExportError) as e:
        trt_build.build_engines(fp16_art, workspace_mb=64, log=lambda s: None)
    msg = str(e.value)
    assert "TensorRT engine build needs" in msg and "RAM available" in msg and "nothing was built" in msg
    assert "--int4" in msg and "add swap" in msg and "--workspace-mb" not in msg   # 64 MiB is small already
    assert rec.built == 0
    # swap for the host copies (the parser's weights and the plan): the same RAM builds
    monkeypatch.setattr(mb, "host_memory", lambda: (ram, peak - ram))
    trt_build.build_engines(fp16_art, workspace_mb=64, log=lambda s: None)
    assert rec.built == 1
    # but swap never holds device allocations: engine weights + workspace must fit the RAM
    monkeypatch.setattr(mb, "host_memory", lambda: (w + workspace - 1, 1 << 40))
    with pytest.raises(ExportError, match="--workspace-mb than 2048"):
        trt_build.build_engines(fp16_art, log=lambda s: None)


def test_integrated_gpu_reads_available_memory_from_the_os(fp16_art, rec, monkeypatch):
    """cudaMemGetInfo's free figure on Jetson leaves out the page cache the kernel would reclaim: a
    board with little 'free' but plenty available builds."""
    monkeypatch.setattr(trt_build, "gpu_info", lambda: dict(ORIN))
    monkeypatch.setattr(trt_build, "device_free_memory", lambda: 1 << 20)
    monkeypatch.setattr(mb, "host_memory", lambda: (16 << 30, 0))
    trt_build.build_engines(fp16_art, log=lambda s: None)
    assert rec.built == 1
    # a discrete GPU is checked against its own free memory
    monkeypatch.setattr(trt_build, "gpu_info", lambda: dict(DISCRETE))
    with pytest.raises(ExportError, match="needs .* but the GPU has 0.00 GiB free"):
        trt_build.build_engines(fp16_art, log=lambda s: None)


def test_operator_check_and_weight_count_never_read_the_weights(fp16_art, tmp_path):
    """The checks before the build read the graph's structure only (onnx's load_external_data=False):
    they work with the weights file gone, so they never hold a copy of the weights next to the
    builder's."""
    from sdar_export.trt_onnx_support import require_supported

    art = _copy(fp16_art, tmp_path)
    m = json.loads((art / "manifest.json").read_text())
    data = art / m["graphs"]["trt"]["external_data"]
    assert data.stat().st_size > 10 * (art / "trt.onnx").stat().st_size   # the weights are outside
    want = trt_build.graph_weight_bytes(art / "trt.onnx")
    data.unlink()
    require_supported(art / "trt.onnx")
    assert trt_build.graph_weight_bytes(art / "trt.onnx") == want
