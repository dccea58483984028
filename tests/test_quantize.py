"""Weight-only quantization (sdar-export --int4/--int8): RTN numerics, graph forms, manifest, runtime
refusal and bad input. Tiny random checkpoints, group size 32 (hidden 128, intermediate 256)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from sdar_export.errors import ExportError  # noqa: E402
from sdar_export.quantize import QTensor, make_scheme, quantize_rtn  # noqa: E402

MC = 64  # max context: small, so validation is quick


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    from sdar_export.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("qck") / "ck", preset="tiny", seed=0)


@pytest.fixture(scope="module")
def art4(ck, tmp_path_factory):
    """int4, group 32, MatMulNBits, validated (exact + shipped + vs float); weights in the artifact's
    one shared external data file."""
    from sdar_export.cli import export

    return export(ck, tmp_path_factory.mktemp("qa4") / "art", max_context=MC, quantize="int4", group_size=32,
                  quiet=True)


@pytest.fixture(scope="module")
def artq(ck, tmp_path_factory):
    """int4, group 32, QDQ (TensorRT form), quantized embeddings and LM head; exact validation of decode."""
    from sdar_export.checkpoint import load_checkpoint
    from sdar_export.cli import export
    from sdar_export.model import SDARModel
    from sdar_export.quantize import quantize_weights, validate_quantized

    art = export(ck, tmp_path_factory.mktemp("qaq") / "art", max_context=MC, quantize="int4", group_size=32,
                 quant_format="QDQ", quantize_embeddings=True, quantize_lm_head=True, quiet=True,
                 skip_validate=True)
    man = json.loads((art / "manifest.json").read_text())
    c = load_checkpoint(ck)
    scheme = make_scheme("int4", 32, fmt="QDQ", quantize_embeddings=True, quantize_lm_head=True)
    w, _ = quantize_weights(c.weights, c.config, scheme, "float32")
    res, _ = validate_quantized(SDARModel(c.config, w).eval(), None, art, {"decode": man["graphs"]["decode"]},
                                scheme, 4, MC, 1, "float32", None, shipped=False)
    return art, res


def _initializers(m):
    return {t.name: t for t in m.graph.initializer}


# ------------------------------------------------------------------ RTN numerics


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (4, 16, False), (8, None, True), (8, 32, False)])
def test_rtn_round_trip(bits, group, sym):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 64)).astype(np.float32)
    w[3, :32] = 0.0  # an all-zero group must not divide by zero
    qt = quantize_rtn(w, bits, group, sym, np.float32)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if sym else (0, 2 ** bits - 1)
    assert qt.q.min() >= lo and qt.q.max() <= hi
    deq = qt.dequantize()
    assert np.isfinite(deq).all() and np.all(deq[3, :32] == 0)
    # RTN error is at most half a step per element
    step = np.repeat(qt.scale, qt.block, axis=1)
    assert np.all(np.abs(deq - w) <= 0.5 * step + 1e-6)
    # asymmetric must represent 0 exactly (padding / zero weights stay zero)
    assert qt.zp is None or np.all(qt.zp <= hi)


def test_matmulnbits_packing_matches_dequantized_weights():
    """The packed MatMulNBits initializers compute x @ dequant(W)^T (accuracy level 0)."""
    from onnx import TensorProto, helper
    from sdar_export.quantize import _matmulnbits_inits

    rng = np.random.default_rng(1)
    N, K = 40, 64
    for bits, sym in ((4, True), (4, False), (8, True), (8, False)):
        qt = quantize_rtn(rng.standard_normal((N, K)).astype(np.float32), bits, 16, sym, np.float32)
        inits = _matmulnbits_inits("w", qt, np.float32)
        node = helper.make_node("MatMulNBits", ["x"] + [t.name for t in inits], ["y"], domain="com.microsoft",
                                K=K, N=N, bits=bits, block_size=16, accuracy_level=0)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, N])], inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18),
                                                helper.make_opsetid("com.microsoft", 1)])
        m.ir_version = 9
        s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        x = rng.standard_normal((3, K)).astype(np.float32)
        np.testing.assert_allclose(s.run(None, {"x": x})[0], x @ qt.dequantize().T, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ exported graphs


def test_int4_matmulnbits_graphs(art4):
    man = json.loads((art4 / "manifest.json").read_text())
    q = man["quantization"]
    assert q["weights"] == "int4" and q["bits"] == 4 and q["group_size"] == 32 and q["symmetric"] is True
    assert q["format"] == "MatMulNBits" and q["accuracy_level"] == 4
    assert q["quantized_weights"] == 14 and q["embeddings"] == "float32" and q["lm_head"] == "float32"
    # exact check: float math vs PyTorch with the same dequantized weights, float32 tolerance
    for g, err in q["validation"]["exact_max_abs"].items():
        assert err < 1e-4, (g, err)
    assert 0 < q["validation"]["vs_float_rel"]["decode"]["logits"] < 1.0   # quantization error, reported
    assert set(q["validation"]["shipped_rel"]) == {"prefill", "decode", "fused", "step"}
    assert "step" in q["validation"]["exact_max_abs"]
    # the step graph: q/k/v and gate/up MatMulNBits fused over Concat-ed packed weights (2 per layer)
    step = onnx.load(str(art4 / "step.onnx"))
    fused = [n for n in step.graph.node if n.op_type == "MatMulNBits" and "_fused" in n.name]
    assert len(fused) == 2 * man["model"]["num_layers"]
    assert {n.op_type for n in step.graph.node if n.name.endswith("_concat")} == {"Concat"}
    names = {}
    for g in ("prefill", "decode", "fused"):
        m = onnx.load(str(art4 / f"{g}.onnx"))
        onnx.checker.check_model(m)
        inits = _initializers(m)
        nbits = [n for n in m.graph.node if n.op_type == "MatMulNBits"]
        # prefill has no LM head: the last layer's attention output and MLP are dead code
        assert len(nbits) == (9 if g == "prefill" else 14), g
        for n in nbits:
            attrs = {a.name: a.i for a in n.attribute}
            assert attrs["bits"] == 4 and attrs["block_size"] == 32 and attrs["accuracy_level"] == 4
            assert inits[n.input[1]].data_type == onnx.TensorProto.UINT8
        names[g] = {n.input[1] for n in nbits}
        # the only float MatMul weight left is the LM head [hidden, vocab]
        float_w = [list(inits[n.input[1]].dims) for n in m.graph.node
                   if n.op_type == "MatMul" and n.input[1] in inits]
        assert float_w == ([] if g == "prefill" else [[128, 512]]), (g, float_w)
    # the three graphs hold the same packed weights under the same names (shareable)
    assert names["prefill"] < names["decode"] == names["fused"]


def test_qdq_graphs_opset21_and_ort_runs_them(artq):
    artq, res = artq
    man = json.loads((artq / "manifest.json").read_text())
    q = man["quantization"]
    assert q["format"] == "QDQ" and q["embeddings"] == "int4" and q["lm_head"] == "int4"
    assert "validation" not in q   # skip_validate
    for err in res["exact_max_abs"].values():   # ORT (opset-21 int4 DequantizeLinear) vs dequantized torch
        assert err < 1e-4
    m = onnx.load(str(artq / "decode.onnx"))
    onnx.checker.check_model(m, full_check=True)
    assert {o.domain or "": o.version for o in m.opset_import}[""] == 21
    assert not any(o.domain == "com.microsoft" for o in m.opset_import)
    inits = _initializers(m)
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 16   # 14 linears + LM head + embedding table
    for n in dq:
        assert inits[n.input[0]].data_type == onnx.TensorProto.INT4
        assert len(n.input) == 2   # symmetric: no zero point (TensorRT 10.3)
        assert {a.name: a.i for a in n.attribute}["block_size"] == 32
    assert not any(n.op_type == "MatMul" and n.input[1] in inits for n in m.graph.node)


def test_external_data_shared_by_all_graphs(art4):
    """One shared external weights file; every graph points into it; validation copies removed."""
    from sdar_export.weight_store import FILE_NAME

    man = json.loads((art4 / "manifest.json").read_text())
    assert (art4 / FILE_NAME).is_file()
    assert all(g.get("external_data") == FILE_NAME for g in man["graphs"].values())
    assert not list(art4.glob(".exact_*")) and not list(art4.glob(".segment_*"))
    m = onnx.load(str(art4 / "decode.onnx"), load_external_data=False)
    ext = [t.name for t in m.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert any(n.endswith("_qb") for n in ext)   # packed weights live in the shared file


def test_moe_int8_asymmetric(tmp_path):
    """MoE experts ([E, K, N] stacks: 3-D DequantizeLinear, blocked) and zero points (asymmetric)."""
    from sdar_export.checkpoint import load_checkpoint
    from sdar_export.cli import export
    from sdar_export.make_checkpoint import make_checkpoint
    from sdar_export.model import SDARModel
    from sdar_export.quantize import quantize_weights, validate_quantized

    ck = make_checkpoint(tmp_path / "moe", preset="tiny", seed=1, moe=True)
    art = export(ck, tmp_path / "art", max_context=32, quantize="int8", symmetric=False, skip_validate=True,
                 quiet=True)
    man = json.loads((art / "manifest.json").read_text())
    assert man["quantization"]["nodes"] == {"matmulnbits": 8, "dequantize": 6, "gather": 0}
    assert man["quantization"]["quantized_weights"] == 2 * (4 + 3 * 4)
    c = load_checkpoint(ck)
    scheme = make_scheme("int8", symmetric=False)
    w, _ = quantize_weights(c.weights, c.config, scheme, "float32")
    res, _ = validate_quantized(SDARModel(c.config, w).eval(), None, art, {"decode": man["graphs"]["decode"]},
                                scheme, 4, 32, 1, "float32", None, shipped=False)
    assert res["exact_max_abs"]["decode"] < 1e-4
    m = onnx.load(str(art / "decode.onnx"))
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            assert len(n.input) == 4   # zero points
        if n.op_type == "DequantizeLinear":
            assert len(n.input) == 3 and {a.name for a in n.attribute} == {"axis", "block_size"}


def test_generator_runs_quantized_artifact(art4):
    from sdar_rt import Generator

    out = Generator(art4, engine="ort", threads=1).generate(prompt_ids=[5, 6, 7, 8, 9], max_new_tokens=12,
                                                             denoising_steps=2)
    assert 1 <= len(out.token_ids) <= 12


# ------------------------------------------------------------------ manifest / runtime refusal


def test_manifest_validation_and_engine_refusal(art4, tmp_path):
    from sdar_rt.artifact import ArtifactError, check_engine_support, load_artifact, validate_manifest

    a = load_artifact(art4)
    a.check_engine("ort")
    with pytest.raises(ArtifactError, match="cannot run on TensorRT.*--quant-format QDQ"):
        a.check_engine("trt")
    from sdar_rt import Generator

    with pytest.raises(ArtifactError, match="cannot run on TensorRT"):  # the user-facing path too
        Generator(art4, engine="trt")
    man = json.loads((art4 / "manifest.json").read_text())
    check_engine_support({**man, "quantization": {**man["quantization"], "format": "QDQ"}}, "trt")
    with pytest.raises(ArtifactError, match="symmetric"):
        check_engine_support({**man, "quantization": {**man["quantization"], "format": "QDQ",
                                                       "symmetric": False}}, "trt")
    for bad, msg in (({"format": "GPTQ"}, "format"), ({"weights": "int3"}, "weights"),
                     ({"group_size": 48}, "group_size"), ({"symmetric": "yes"}, "symmetric"),
                     ({"group_size": None}, "required for int4")):
        with pytest.raises(ArtifactError, match=msg):
            validate_manifest({**man, "quantization": {**man["quantization"], **bad}})
    # the ONNX Runtime engine refuses a form it does not know
    bad_dir = tmp_path / "bad"
    shutil.copytree(art4, bad_dir)
    man["quantization"]["format"] = "QDQ"
    man["quantization"]["symmetric"] = True
    (bad_dir / "manifest.json").write_text(json.dumps(man))
    from sdar_rt.ort_engine import OrtEngine

    OrtEngine(load_artifact(bad_dir))   # QDQ: fine on ORT (it is the same math)


def test_trt_build_refuses_matmulnbits_artifact(art4, capsys):
    from sdar_export.cli import main

    assert main([str(art4), "--engine", "trt"]) == 2
    err = capsys.readouterr().err
    assert "cannot run on TensorRT" in err and "QDQ" in err


def test_int4_body_with_8bit_lm_head(ck, tmp_path):
    """--lm-head-bits 8: the head is an 8-bit MatMulNBits in the body's groups, the body stays 4-bit,
    and the graphs still match PyTorch with the same dequantized weights (exact validation)."""
    from sdar_export.cli import main

    out = tmp_path / "art"
    assert main([str(ck), "-o", str(out), "--max-context", str(MC), "-q", "--int4", "--group-size", "32",
                 "--lm-head-bits", "8"]) == 0
    q = json.loads((out / "manifest.json").read_text())["quantization"]
    assert q["weights"] == "int4" and q["lm_head"] == "int8" and q["embeddings"] == "float32"
    assert q["quantized_weights"] == 15
    for g, err in q["validation"]["exact_max_abs"].items():
        assert err < 1e-4, (g, err)
    for g in ("decode", "step"):
        m = onnx.load(str(out / f"{g}.onnx"))
        bits = {}
        for n in m.graph.node:
            if n.op_type == "MatMulNBits":
                a = {x.name: x.i for x in n.attribute}
                bits.setdefault(a["bits"], []).append(a["N"])
                assert a["block_size"] == 32
        assert bits[8] == [512], g          # the head [hidden -> vocab], nothing else in 8 bits
        assert len(bits[4]) == (14 if g == "decode" else 8), g   # step: q/k/v and gate/up fused
        assert not [n for n in m.graph.node if n.op_type == "MatMul" and n.input[1].startswith("w_")], g


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("args,msg", [
    (["--int4", "--group-size", "256"], "does not divide the input dimension 128"),
    (["--int4", "--group-size", "48"], "power of two"),
    (["--int4", "--group-size", "32", "--asymmetric", "--quant-format", "QDQ"], "symmetric"),
    (["--int4", "--bf16"], "float32 or float16"),
    (["--group-size", "32"], "add --int4 or --int8"),
    (["--quantize-lm-head"], "add --int4 or --int8"),
    (["--lm-head-bits", "8"], "add --int4 or --int8"),
    (["--int4", "--lm-head-bits", "8", "--quant-format", "QDQ"], "MatMulNBits"),
    (["--int8", "--lm-head-bits", "4"], "needs a --group-size"),
])
def test_bad_quantization_options(ck, tmp_path, capsys, args, msg):
    from sdar_export.cli import main

    rc = main([str(ck), "-o", str(tmp_path / "o"), "--max-context", str(MC), "-q", *args])
    assert rc == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_int4_and_int8_are_exclusive(ck, capsys):
    from sdar_export.cli import main

    with pytest.raises(SystemExit) as e:
        main([str(ck), "--int4", "--int8"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ExportError, match="mutually exclusive|int4' or 'int8"):
        make_scheme("int4+int8")


def test_trt_engine_needs_qdq_form():
    with pytest.raises(ExportError, match="MatMulNBits"):
        make_scheme("int4", 32, fmt="MatMulNBits", engine="trt")
    assert make_scheme("int4", 32, engine="trt").format == "QDQ"
    with pytest.raises(ExportError, match="INT4-only"):
        make_scheme("int8", 32, fmt="QDQ")


def test_qdq_refuses_moe(tmp_path):
    import torch
    from sdar_export.quantize import quantize_weights

    class Cfg:
        is_moe = True

    with pytest.raises(ExportError, match="MoE.*MatMulNBits"):
        quantize_weights({"model.layers.0.mlp.experts.0.up_proj.weight": torch.randn(32, 32)}, Cfg(),
                         make_scheme("int4", 32, fmt="QDQ"), "float32")


def test_already_quantized_checkpoint(ck, tmp_path, capsys):
    from sdar_export.cli import main

    q = tmp_path / "gptq"
    shutil.copytree(ck, q)
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": 128}
    (q / "config.json").write_text(json.dumps(cfg))
    assert main([str(q), "-o", str(tmp_path / "o"), "--int4", "-q"]) == 2
    err = capsys.readouterr().err
    assert "already quantized" in err and "gptq" in err


def test_qtensor_dequantize_per_channel_blocks():
    """Per-channel int8 is stored as power-of-two blocks repeating the channel's scale."""
    import torch
    from sdar_export.quantize import quantize_weights

    class C:  # minimal config stand-in
        pass

    w = {"model.layers.0.mlp.down_proj.weight": torch.randn(16, 96),
         "model.embed_tokens.weight": torch.randn(10, 16)}
    out, plan = quantize_weights(w, C(), make_scheme("int8"), "float32")
    qt: QTensor = plan.tensors["model.layers.0.mlp.down_proj.weight"]
    assert qt.block == 32 and qt.scale.shape == (16, 3)
    assert np.all(qt.scale == qt.scale[:, :1])
    assert torch.equal(out["model.embed_tokens.weight"], w["model.embed_tokens.weight"])


def test_quality_command(ck, art4, tmp_path, capsys):
    """python -m sdar_export.quality: per-layer errors, generation agreement / TPF / tokens/s (here the
    quantized artifact against itself, so agreement is exact)."""
    from sdar_export.quality import main

    out = tmp_path / "q.json"
    rc = main([str(ck), "--int4", "--group-size", "32", "--float-artifact", str(art4), "--quant-artifact",
               str(art4), "--prompts", "2", "--prompt-len", "8", "--max-new-tokens", "8", "--threads", "1",
               "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    t = r["torch"]
    assert len(t["layer_rel_err"]) == 2 and 0 < t["layer_rel_err"][0] < 1 and 0 < t["logits_rel_err"] < 1
    g = r["generation"]
    assert g["token_agreement"] == 1.0 and g["identical_sequences"] == 2 and g["tpf_change"] == 0
    assert g["float"]["decode_tokens_per_s"] > 0 and g["quant"]["tpf"] > 0
    assert main([str(ck), "--int4", "--group-size", "48"]) == 2
    assert "power of two" in capsys.readouterr().err


def test_float_head_note_when_the_head_outweighs_the_quantized_body():
    """The exporter's hint: a float LM head larger than the whole 4-bit body is named, with the option
    that quantizes it; none when the head is quantized or smaller than the body."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from sdar_export.quantize import float_head_note, quantize_weights

    body = {"model.layers.0.mlp.down_proj.weight": torch.randn(64, 128)}   # 8192 int4 + 256 scales
    cfg = SimpleNamespace(is_moe=False)
    for vocab, head_bits, want in ((1000, None, True), (8, None, False), (1000, 8, False)):
        w = {**body, "model.embed_tokens.weight": torch.randn(vocab, 128)}
        scheme = make_scheme("int4", 32, lm_head_bits=head_bits)
        qweights, plan = quantize_weights(w, cfg, scheme, "float32")
        note = float_head_note(plan, qweights, "float32")
        assert (note is not None) == want, (vocab, head_bits, note)
        if want:
            assert "--lm-head-bits" in note and "LM head" in note
