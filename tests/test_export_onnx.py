"""sdar-export end to end on tiny random checkpoints: artifact layout, manifest, graph I/O names,
ONNX Runtime stepping vs the PyTorch full sequence, validation catching a corrupted graph,
fp16 / bf16 / MoE exports, the one shared weights file, atomic output."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from sdar_export import cli
from sdar_export.checkpoint import load_checkpoint
from sdar_export.errors import ExportError, ValidationError
from sdar_export.make_checkpoint import make_checkpoint
from sdar_export.model import SDARModel, full_sequence_logits
from sdar_export.onnx_export import input_names, output_names
from sdar_export.options import ExportOptions
from sdar_export.validate import validate_artifact_graphs, validate_graph
from sdar_export.weight_store import FILE_NAME

L = 4
MAX_CTX = 32


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ck") / "tiny", seed=0)


@pytest.fixture(scope="module")
def artifact(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "tiny-fp32"
    result = cli.run_export(ExportOptions(model_dir=ckpt, out_dir=out, block_length=L, max_context=MAX_CTX,
                                          quiet=True))
    assert result.path == out
    return out, result


def _model(ckpt, dtype="float32"):
    ck = load_checkpoint(ckpt, dtype=dtype)
    return SDARModel(ck.config, ck.weights, dtype=dtype).eval()


def test_artifact_layout_and_manifest(artifact, ckpt):
    out, result = artifact
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["manifest.json", "prefill.onnx", "decode.onnx", "fused.onnx", "step.onnx",
                            "trt.onnx", FILE_NAME,
                            "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                            "config.json", "cpu_weights.bin"])
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]
    m = json.loads((out / "manifest.json").read_text())
    sdar_rt_artifact = pytest.importorskip("sdar_rt.artifact")
    sdar_rt_artifact.validate_manifest(m)
    assert m["format"] == "sdar_rt.artifact" and m["format_version"] == 3
    ck = load_checkpoint(ckpt, with_weights=False)
    assert m["source"]["checkpoint_sha256"] == ck.sha256
    assert m["model"] == {"num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "head_dim": 32,
                          "hidden_size": 128, "vocab_size": 512, "max_position_embeddings": 1024}
    assert (m["block_length"], m["max_context"], m["batch"], m["dtype"]) == (L, MAX_CTX, 1, "float32")
    assert m["tokens"] == {"mask_id": ck.mask_id, "eos_ids": ck.eos_ids, "pad_id": ck.pad_id}
    g = m["graphs"]
    assert (g["prefill"]["tokens"], g["prefill"]["logits"]) == (None, 0)
    assert (g["decode"]["tokens"], g["decode"]["logits"]) == (L, L)
    assert (g["fused"]["tokens"], g["fused"]["logits"]) == (2 * L, L)
    assert g["prefill"]["unused_inputs"] == ["past_key_1", "past_value_1"]
    assert (g["step"]["tokens"], g["step"]["logits"], g["step"]["engine"]) == (None, "num_logits", "ort")
    assert g["step"]["inputs"]["num_logits"] == {"dtype": "int64", "shape": [1]}
    assert g["step"]["outputs"]["logits"]["shape"] == [1, "num_logits", 512]
    # TensorRT's graph: dynamic T, the logits of the last L positions, every input read
    assert (g["trt"]["tokens"], g["trt"]["logits"], g["trt"]["engine"]) == (None, L, "trt")
    assert g["trt"]["serves"] == ["prefill", "decode", "fused"] and "unused_inputs" not in g["trt"]
    assert g["trt"]["inputs"]["input_ids"]["shape"] == [1, "new_tokens"]
    assert g["trt"]["outputs"]["logits"]["shape"] == [1, L, 512]
    for kind in g:
        errs = m["validation"][kind]
        assert errs and max(errs.values()) < 1e-4
    assert set(result.times) >= {"load checkpoint", "export ONNX graphs", "validate with ONNX Runtime"}
    assert all(r.peak_rss >= max(r.rss_before, r.rss_after) > 0 for r in result.stages)


def test_graph_io_names_and_shapes(artifact):
    out, _ = artifact
    for kind, T, NL in [("prefill", "new_tokens", 0), ("decode", L, L), ("fused", 2 * L, L)]:
        s = ort.InferenceSession(str(out / f"{kind}.onnx"), providers=["CPUExecutionProvider"])
        ins = {i.name: (i.type, i.shape) for i in s.get_inputs()}
        outs = {o.name: (o.type, o.shape) for o in s.get_outputs()}
        assert list(ins) == input_names(2)
        assert list(outs) == output_names(2, NL > 0)
        assert ins["input_ids"] == ("tensor(int64)", [1, T])
        assert ins["past_len"] == ("tensor(int64)", [1])
        assert ins["past_key_0"][1][1:] == [1, 2, 32] and isinstance(ins["past_key_0"][1][0], str)
        if NL:
            assert outs["logits"] == ("tensor(float)", [1, NL, 512])
        assert outs["present_value_1"][1][1:] == [1, 2, 32]


def test_ort_cached_stepping_equals_full_sequence(artifact, ckpt):
    """Drive the three graphs like the runtime does (S-major cache, bound prefix, slot writes)."""
    out, _ = artifact
    model = _model(ckpt)
    sess = {k: ort.InferenceSession(str(out / f"{k}.onnx"), providers=["CPUExecutionProvider"])
            for k in ("prefill", "decode", "fused")}
    ids = torch.randint(0, 512, (1, 5 * L), generator=torch.Generator().manual_seed(3))
    full = full_sequence_logits(model, ids, L).numpy()
    cache = {n: np.zeros((MAX_CTX, 1, 2, 32), np.float32) for n in input_names(2)[2:]}
    declared = {k: {i.name for i in s.get_inputs()} for k, s in sess.items()}

    def step(kind, start, T, bound):
        feeds = {"input_ids": ids[:, start:start + T].numpy(), "past_len": np.array([start], np.int64)}
        feeds.update({n: c[:bound] for n, c in cache.items() if n in declared[kind]})
        res = dict(zip([o.name for o in sess[kind].get_outputs()], sess[kind].run(None, feeds), strict=True))
        for n, c in cache.items():
            c[start:start + T] = res[n.replace("past", "present")]
        return res.get("logits")

    step("prefill", 0, 2 * L, 0)
    np.testing.assert_allclose(step("decode", 2 * L, L, 2 * L), full[:, 2 * L:3 * L], atol=1e-4)
    np.testing.assert_allclose(step("decode", 2 * L, L, 3 * L + 1), full[:, 2 * L:3 * L], atol=1e-4)
    np.testing.assert_allclose(step("fused", 2 * L, 2 * L, 2 * L), full[:, 3 * L:4 * L], atol=1e-4)
    step("prefill", 4 * L, L, 4 * L)
    assert np.abs(cache["past_key_0"][:5 * L]).sum() > 0


def test_validation_reports_corrupted_graph(artifact, ckpt, tmp_path):
    out, _ = artifact
    m = onnx.load(str(out / "decode.onnx"))
    big = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    w = onnx.numpy_helper.to_array(big).copy()
    w.flat[: w.size // 8] += 0.5
    big.CopyFrom(onnx.numpy_helper.from_array(w, big.name))
    onnx.save(m, str(tmp_path / "decode.onnx"))
    model = _model(ckpt)
    rep = validate_graph(model, tmp_path / "decode.onnx", "decode", L, L, L, MAX_CTX)
    assert not rep.ok
    assert any("exceeds tolerance" in f and "decode" in f for f in rep.failures)
    graphs = {"decode": {"file": "decode.onnx", "tokens": L, "logits": L}}
    with pytest.raises(ValidationError, match="disagree with the PyTorch model"):
        validate_artifact_graphs(model, tmp_path, graphs, L, MAX_CTX, 1, "float32")
    ok = validate_graph(model, out / "decode.onnx", "decode", L, L, L, MAX_CTX)
    assert ok.ok and len(ok.cases) == 3 and ok.errors["logits"] < 1e-4
    strict = validate_graph(model, out / "decode.onnx", "decode", L, L, L, MAX_CTX, tolerance=(-1.0, 0.0))
    assert not strict.ok


@pytest.mark.parametrize("moe,dtype,shards", [(False, "float16", 1), (True, "bfloat16", 2)])
def test_half_precision_and_moe_export_validates(tmp_path, moe, dtype, shards):
    ck = make_checkpoint(tmp_path / "ck", moe=moe, seed=5, dtype=dtype, shards=shards)
    out = cli.export(ck, tmp_path / "art", dtype=dtype, block_length=L, max_context=16, quiet=True)
    m = json.loads((out / "manifest.json").read_text())
    assert m["dtype"] == dtype and m["source"]["model_type"] == ("sdar_moe" if moe else "sdar")
    s = ort.InferenceSession(str(out / "decode.onnx"), providers=["CPUExecutionProvider"])
    kv_type = {"float16": "tensor(float16)", "bfloat16": "tensor(bfloat16)"}[dtype]
    assert {i.name: i.type for i in s.get_inputs()}["past_key_0"] == kv_type
    assert {o.name: o.type for o in s.get_outputs()}["logits"] == "tensor(float)"
    assert m["validation"]["fused"]["logits"] < 0.05


def _external(path) -> dict[str, tuple[int, int]]:
    """Initializer name -> (offset, length) in the weights file, of a graph file."""
    m = onnx.load(str(path), load_external_data=False)
    out = {}
    for t in m.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            e = {x.key: x.value for x in t.external_data}
            assert e["location"] == FILE_NAME
            out[t.name] = (int(e["offset"]), int(e["length"]))
    return out


def _large_weight_bytes(weights: dict) -> int:
    """Bytes of the tensors the weights file holds (1 KiB or more; smaller ones stay in the graphs)."""
    sizes = [t.numel() * t.element_size() for t in weights.values()]
    return sum(n for n in sizes if n >= 1024)


def test_every_graph_reads_one_weights_file(artifact, ckpt):
    """The five graphs point into one weights file holding each weight once, under the same
    content-hash names (the step graph's fused projections Concat those same initializers; it adds
    only its cos / sin tables); the graph files themselves hold no weights."""
    out, _ = artifact
    m = json.loads((out / "manifest.json").read_text())
    names = {}
    for kind, g in m["graphs"].items():
        assert g["external_data"] == FILE_NAME
        assert os.path.getsize(out / g["file"]) < 200_000
        names[kind] = _external(out / g["file"])
    rope = {"rotary_cos_cache", "rotary_sin_cache"}     # the step graph's RotaryEmbedding tables
    assert names["decode"] == names["fused"] == names["trt"] == {k: v for k, v in names["step"].items()
                                                                 if k not in rope}
    assert set(names["prefill"]) < set(names["decode"])
    # each weight once: no two names share bytes, and the file is the weights plus the rope tables
    spans = sorted({v for g in names.values() for v in g.values()})
    assert all(a[0] + a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    data = (out / FILE_NAME).stat().st_size
    assert data == spans[-1][0] + spans[-1][1]
    stored = data - sum(names["step"][r][1] for r in rope)
    big = _large_weight_bytes(load_checkpoint(ckpt).weights)
    assert big <= stored < big + 64 * len(spans)       # 64-byte alignment between tensors


def test_tied_head_reads_the_embedding_table(tmp_path):
    """With tied embeddings the LM head is Transpose(embedding table): the table is in the weights
    file once (not once more transposed), and ONNX Runtime stepping still equals PyTorch."""
    ck = make_checkpoint(tmp_path / "ck", seed=3, tie_word_embeddings=True)
    out = cli.export(ck, tmp_path / "art", block_length=L, max_context=MAX_CTX, quiet=True)
    c = load_checkpoint(ck)
    table = c.weights["model.embed_tokens.weight"]
    assert "lm_head.weight" not in c.weights or c.weights["lm_head.weight"] is table
    m = onnx.load(str(out / "decode.onnx"), load_external_data=False)
    heads = [n for n in m.graph.node if n.op_type == "Transpose" and n.name == "/model/lm_head/Transpose"]
    assert len(heads) == 1
    gather = next(n for n in m.graph.node if n.op_type == "Gather" and n.input[0] == heads[0].input[0])
    assert gather is not None
    step = _external(out / "step.onnx")
    stored = (out / FILE_NAME).stat().st_size - step["rotary_cos_cache"][1] - step["rotary_sin_cache"][1]
    big = _large_weight_bytes({n: t for n, t in c.weights.items() if n != "lm_head.weight"})
    assert big <= stored < big + 64 * len(step)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["validation"]["decode"]["logits"] < 1e-4


def test_cli_main_and_force(ckpt, tmp_path, capsys):
    out = tmp_path / "art"
    assert cli.main([str(ckpt), "-o", str(out), "--max-context", "16", "--skip-validate", "-q"]) == 0
    assert json.loads((out / "manifest.json").read_text())["validation"] == {}
    assert cli.main([str(ckpt), "-o", str(out), "--max-context", "16", "-q"]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "manifest.json").exists()
    assert cli.main([str(ckpt), "-o", str(out), "--max-context", "16", "--skip-validate", "--force", "-q",
                     "--fp16"]) == 0
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "float16"
    # a forced export that fails validation leaves the previous artifact in place, and no debris
    assert cli.main([str(ckpt), "-o", str(out), "--max-context", "16", "--force", "-q",
                     "--tolerance", "-1", "0"]) == 2
    assert "disagree with the PyTorch model" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["dtype"] == "float16"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def _is_output_line(line: str) -> bool:  # "decode   logits   max abs 7.6e-06  rel 7.2e-07"
    return " max abs " in line and " rel " in line


def test_output_is_progress_and_a_summary(ckpt, tmp_path, capsys):
    """Default: the stages as they run and a summary with the worst validation error per graph;
    --verbose adds one line per validated output (no more, no less)."""
    out = tmp_path / "art"
    assert cli.main([str(ckpt), "-o", str(out), "--max-context", "16"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)  # stdout: the artifact path only
    err = captured.err
    per_output = [line for line in err.splitlines() if _is_output_line(line)]
    assert per_output == [], per_output
    for stage in ("load checkpoint", "export ONNX graphs", "validate with ONNX Runtime"):
        assert stage in err
    assert "(all within tolerance)" in err and "worst of" in err
    assert f"artifact {out} written in" in err
    manifest = json.loads((out / "manifest.json").read_text())
    outputs = sum(len(v) for v in manifest["validation"].values())
    graphs = len(manifest["graphs"])  # prefill, decode, fused, step, trt
    assert graphs == 5
    assert outputs == graphs * (1 + 2 * 2) - 1  # per graph logits + K/V of 2 layers; no logits in prefill
    assert cli.main([str(ckpt), "-o", str(out), "--max-context", "16", "--force", "--verbose"]) == 0
    verbose = [line for line in capsys.readouterr().err.splitlines() if _is_output_line(line)]
    assert len(verbose) == outputs
    assert cli.main([str(ckpt), "-o", str(out), "--max-context", "16", "--force", "-q"]) == 0
    assert capsys.readouterr().err == ""


def test_failed_export_leaves_nothing(ckpt, tmp_path, monkeypatch):
    import sdar_export.onnx_export as ox

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ox, "export_all", boom)
    with pytest.raises(ExportError, match="disk full"):
        cli.export(ckpt, tmp_path / "art", max_context=16, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_trt_on_artifact_without_tensorrt_is_clear_and_torch_free(artifact):
    out, _ = artifact
    code = ("import sys; from sdar_export.cli import main; rc = main([sys.argv[1], '--engine', 'trt']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ))
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    assert r.returncode == 2, r.stderr
    assert "import tensorrt" in r.stderr and "pip install tensorrt" in r.stderr and "JetPack" in r.stderr
