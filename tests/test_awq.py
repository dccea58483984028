"""Activation-aware weight scaling (sdar-export --int4/--int8 --awq): exact folding, error never above
RTN's, the exported artifact, the quality comparison and bad input. Tiny checkpoints, group size 32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from sdar_export.errors import ExportError  # noqa: E402
from sdar_export.quantize import make_scheme  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAINED = ROOT / "python" / "sdar_rt" / "checkpoints" / "tiny"
MC = 64


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    from sdar_export.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("awqck") / "ck", preset="tiny", seed=0)


@pytest.fixture(scope="module")
def ck_mha(tmp_path_factory):
    """One KV head per query head: the o_proj group is scaled too (folded into v_proj's rows)."""
    from sdar_export.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("awqmha") / "ck", preset="tiny", seed=3,
                           num_key_value_heads=4)


def _load(path):
    from sdar_export.checkpoint import load_checkpoint

    return load_checkpoint(path, dtype="float32")


def _calib_ids(path, mc=MC):
    from sdar_export.awq import calibration_ids

    return calibration_ids(path, None, mc, _load(path).config.vocab_size)


def _logits(cfg, weights, ids):
    from sdar_export.model import SDARModel, full_sequence_logits

    return full_sequence_logits(SDARModel(cfg, weights).eval(), ids, 4)


# ------------------------------------------------------------------ folding


@pytest.mark.parametrize("which", ["ck", "ck_mha"])
def test_folding_random_scales_is_exact(which, request):
    """Arbitrary positive scales on every group leave the float network's logits unchanged."""
    from sdar_export.awq import GroupChoice, fold_scales, layer_groups

    c = _load(request.getfixturevalue(which))
    cfg = c.config
    rng = np.random.default_rng(0)
    choices = []
    for i in range(cfg.num_hidden_layers):
        for g in layer_groups(cfg, i):
            K = c.weights[f"model.layers.{i}.{g.linears[0]}.weight"].shape[1]
            s = np.exp(rng.normal(0, 0.7, K)).astype(np.float32)
            choices.append(GroupChoice(i, g.name, 0.5, s, [1.0, 0.5]))
    groups = {ch.group for ch in choices}
    assert groups == ({"qkv", "o", "gate_up", "down"} if which == "ck_mha" else {"qkv", "gate_up", "down"})
    folded = fold_scales(c.weights, choices)
    # the weights really changed (both columns and, for up/v_proj, rows)
    up = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(folded[up], c.weights[up])
    ids = torch.tensor([list(range(5, 29))], dtype=torch.int64)
    ref, got = _logits(cfg, c.weights, ids), _logits(cfg, folded, ids)
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_calibrated_folding_is_exact_on_trained_checkpoint():
    from sdar_export.awq import apply_awq

    c = _load(TRAINED)
    scheme = make_scheme("int4", 32)
    res = apply_awq(c.weights, c.config, _calib_ids(TRAINED), scheme, "float32", 4, c.mask_id)
    assert any(ch.alpha > 0 for ch in res.choices)       # the trained model does get scaled
    from sdar_export.tiny_task import task as T

    ids = torch.tensor([T.prompt_ids([3, 1, 2, 9, 7]) + T.answer_ids([3, 1, 2, 9, 7])], dtype=torch.int64)
    ref, got = _logits(c.config, c.weights, ids), _logits(c.config, res.weights, ids)
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_batched_calibration_equals_one_prompt_at_a_time(ck):
    """Mask-token padding to whole blocks does not change what the valid positions compute."""
    from sdar_export.awq import calibration_batch
    from sdar_export.model import SDARModel, full_sequence_logits

    c = _load(ck)
    m = SDARModel(c.config, c.weights).eval()
    prompts = [[7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [21, 22, 23, 24, 25]]
    ids, valid = calibration_batch(prompts, 4, c.mask_id)
    assert ids.shape == (3, 12) and valid.sum(1).tolist() == [4, 12, 8]
    both = full_sequence_logits(m, ids, 4)
    for b in range(3):
        n = int(valid[b].sum())
        alone = full_sequence_logits(m, ids[b:b + 1, :n], 4)
        torch.testing.assert_close(both[b:b + 1, :n], alone, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ error vs RTN


def _inputs(model, cfg, ids, valid):
    """Per (layer, group): the input rows of the group's first linear (independent of awq.calibrate)."""
    from sdar_export.awq import layer_groups

    got, handles = {}, []
    for i, layer in enumerate(model.layers):
        for g in layer_groups(cfg, i):
            def hook(_m, args, key=(i, g.name)):
                got[key] = args[0].detach().float().reshape(-1, args[0].shape[-1])[valid.reshape(-1)]
            handles.append(layer.get_submodule(g.module).register_forward_pre_hook(hook))
    with torch.no_grad():
        model(ids, torch.zeros(1, dtype=torch.int64), model.empty_cache(ids.shape[0]),
              model.empty_cache(ids.shape[0]), 4, 0)
    for h in handles:
        h.remove()
    return got


@pytest.mark.parametrize("bits,group,sym", [(4, 32, True), (4, 32, False), (8, None, True)])
def test_awq_output_error_not_above_rtn(bits, group, sym):
    """Measured on the real networks: x W^T (float) against x Q(W)^T (RTN) and (x/s) Q(W diag s)^T
    read from the folded network (AWQ), on the calibration activations, for every group."""
    from sdar_export.awq import apply_awq, calibration_batch, layer_groups
    from sdar_export.model import SDARModel
    from sdar_export.quantize import quantize_rtn

    c = _load(TRAINED)
    cfg = c.config
    scheme = make_scheme(f"int{bits}", group, sym)
    prompts = _calib_ids(TRAINED)
    res = apply_awq(c.weights, cfg, prompts, scheme, "float32", 4, c.mask_id)
    ids, valid = calibration_batch(prompts, 4, c.mask_id)
    x_f = _inputs(SDARModel(cfg, c.weights).eval(), cfg, ids, valid)
    x_a = _inputs(SDARModel(cfg, res.weights).eval(), cfg, ids, valid)
    chosen = {(ch.layer, ch.group): ch for ch in res.choices}
    tot_rtn = tot_awq = 0.0
    for i in range(cfg.num_hidden_layers):
        for g in layer_groups(cfg, i):
            num_r = num_a = den = 0.0
            for lin in g.linears:
                name = f"model.layers.{i}.{lin}.weight"
                w, wa = c.weights[name].numpy(), res.weights[name].numpy()
                ref = x_f[i, g.name] @ torch.from_numpy(w).T
                q = quantize_rtn(w, bits, group, sym, np.float32).dequantize()
                qa = quantize_rtn(wa, bits, group, sym, np.float32).dequantize()
                y_r = x_f[i, g.name] @ torch.from_numpy(q).T
                y_a = x_a[i, g.name] @ torch.from_numpy(qa).T
                if lin == "mlp.up_proj":   # its output rows carry down_proj's 1/s: compare what down reads
                    s = torch.from_numpy(chosen[i, "down"].scale)
                    y_a = y_a * s
                num_r += float((y_r - ref).pow(2).sum())
                num_a += float((y_a - ref).pow(2).sum())
                den += float(ref.pow(2).sum())
            rtn, awq = (num_r / den) ** 0.5, (num_a / den) ** 0.5
            ch = chosen[i, g.name]
            assert ch.rtn_error == pytest.approx(rtn, rel=1e-3)     # the search's RTN point is RTN
            if g.name != "gate_up":   # up_proj's row scaling shifts its group scales a hair
                assert ch.error == pytest.approx(awq, rel=1e-3, abs=1e-7)
            assert awq <= rtn * (1 + 1e-3), (i, g.name, awq, rtn)
            tot_rtn, tot_awq = tot_rtn + rtn, tot_awq + awq
    assert tot_awq < tot_rtn    # on a trained model scaling helps overall


def test_search_includes_rtn_and_picks_the_minimum(ck):
    from sdar_export.awq import ALPHAS, search_scale

    rng = np.random.default_rng(1)
    x = torch.from_numpy((rng.standard_normal((200, 64)) * np.exp(rng.normal(0, 1.5, 64))).astype(np.float32))
    w = rng.standard_normal((48, 64)).astype(np.float32)
    alpha, s, errs = search_scale(x, [w], make_scheme("int4", 32), "float32")
    assert len(errs) == len(ALPHAS) and errs[ALPHAS.index(alpha)] == min(errs)
    assert alpha > 0 and min(errs) < errs[0]     # outlier channels: scaling helps
    assert np.isclose(s.max() * s.min(), 1.0, rtol=1e-5)


# ------------------------------------------------------------------ export


@pytest.fixture(scope="module")
def art_awq(ck, tmp_path_factory):
    from sdar_export.cli import main

    d = tmp_path_factory.mktemp("awqart")
    cal = d / "calib.txt"
    cal.write_text("The quick brown fox.\n\n<|im_start|>user\\nHello world!<|im_end|>\n"
                   "def main(): return 42\n")
    out = d / "art"
    assert main([str(ck), "-o", str(out), "--max-context", str(MC), "--int4", "--group-size", "32", "--awq",
                 "--calibration", str(cal), "-q"]) == 0
    return out


def test_awq_artifact_validates_and_generates(art_awq):
    from sdar_rt import Generator

    q = json.loads((art_awq / "manifest.json").read_text())["quantization"]
    assert q["method"] == "awq" and q["weights"] == "int4"
    a = q["awq"]
    assert a["calibration_prompts"] == 3 and a["calibration_tokens"] > 3
    assert a["scaled_groups"] == 2 * 3 and set(a["alpha_per_layer"]) == {"qkv", "gate_up", "down"}
    assert any("o_proj" in s for s in a["skipped"])          # the tiny preset uses GQA
    assert a["calibration_rel_err"]["awq"] <= a["calibration_rel_err"]["rtn"]
    for g, err in q["validation"]["exact_max_abs"].items():  # graphs == the scaled, dequantized network
        assert err < 1e-4, (g, err)
    assert 0 < q["validation"]["vs_float_rel"]["decode"]["logits"] < 1.0   # vs the original float network
    out = Generator(art_awq, engine="ort", threads=1).generate(prompt_ids=[5, 6, 7, 8, 9], max_new_tokens=8,
                                                                denoising_steps=2)
    assert 1 <= len(out.token_ids) <= 8


def test_awq_mha_int8_export(ck_mha, tmp_path):
    """Per-channel int8 with the o_proj group folded into v_proj (built-in calibration prompts)."""
    from sdar_export.cli import export

    art = export(ck_mha, tmp_path / "art", max_context=MC, quantize="int8", awq=True, quiet=True)
    q = json.loads((art / "manifest.json").read_text())["quantization"]
    assert q["method"] == "awq" and q["awq"]["skipped"] == []
    assert set(q["awq"]["alpha_per_layer"]) == {"qkv", "o", "gate_up", "down"}
    assert max(q["validation"]["exact_max_abs"].values()) < 1e-4


def test_quality_awq_comparison(tmp_path):
    from sdar_export.quality import main

    out = tmp_path / "q.json"
    assert main([str(TRAINED), "--int4", "--group-size", "32", "--awq", "--calibration", "task",
                 "--prompts", "2", "--prompt-len", "8", "--task-prompts", "40", "--skip-generation",
                 "--workdir", str(tmp_path), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    cmp = r["rtn_vs_awq"]
    assert set(cmp) >= {"torch.logits_rel_err", "torch_task.logits_rel_err"}
    for v in cmp.values():
        assert v["rtn"] > 0 and v["awq"] > 0
    assert r["scheme"]["awq_calibration"] == {"source": "task", "prompts": 16}


# ------------------------------------------------------------------ bad input


def _run(ck, tmp_path, *args):
    from sdar_export.cli import main

    return main([str(ck), "-o", str(tmp_path / "o"), "--max-context", str(MC), "-q", *args])


def test_calibration_prompt_longer_than_context(ck, tmp_path, capsys):
    cal = tmp_path / "cal.txt"
    cal.write_text("short prompt\n" + "the quick brown fox " * 40 + "\n")
    assert _run(ck, tmp_path, "--int4", "--group-size", "32", "--awq", "--calibration", str(cal)) == 2
    err = capsys.readouterr().err
    assert "calibration prompt 2" in err and "max context 64" in err and "--max-context" in err
    n = int(err.split(" tokens long")[0].rsplit(" ", 1)[1])
    assert n > MC
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", ["", "\n  \n\n"])
def test_empty_calibration_file(ck, tmp_path, capsys, content):
    cal = tmp_path / "cal.txt"
    cal.write_text(content)
    assert _run(ck, tmp_path, "--int4", "--group-size", "32", "--awq", "--calibration", str(cal)) == 2
    assert "no prompts" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,msg", [
    (["--awq"], "add --int4 or --int8"),
    (["--calibration", "x.txt"], "only applies with --awq"),
    (["--int8", "--calibration", "x.txt"], "only applies with --awq"),
    (["--int4", "--group-size", "32", "--awq", "--calibration", "missing.txt"], "cannot be read"),
    (["--int4", "--group-size", "256", "--awq"], "does not divide the input dimension 128"),
])
def test_bad_awq_options(ck, tmp_path, capsys, args, msg):
    assert _run(ck, tmp_path, *args) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_read_calibration_escapes_and_blank_lines(tmp_path):
    from sdar_export.awq import DEFAULT_PROMPTS, read_calibration

    p = tmp_path / "c.txt"
    p.write_text("a\\nb\n\n  \nc\n")
    assert read_calibration(p) == (["a\nb", "c"], str(p))
    assert read_calibration(None)[0] == list(DEFAULT_PROMPTS)
    with pytest.raises(ExportError, match="no prompts"):
        p.write_text("")
        read_calibration(p)


def test_builtin_prompts_are_cut_to_a_small_context(ck):
    """The built-in set is not the user's text: it is cut to the context rather than refused."""
    from sdar_export.awq import DEFAULT_PROMPTS, calibration_ids, read_calibration, tokenize_calibration

    full = calibration_ids(ck, None, 4096, 512)
    cut = calibration_ids(ck, None, 16, 512)
    assert len(cut) == len(DEFAULT_PROMPTS) and max(map(len, full)) > 16
    assert all(c == f[:16] for c, f in zip(cut, full, strict=True))
    texts, where = read_calibration(None)
    with pytest.raises(ExportError, match="tokens long"):
        tokenize_calibration(ck, texts, where, 16, 512)


def test_awq_moe_scales_attention_only(tmp_path):
    """MoE layers: the attention group is scaled, the router + experts are left to RTN."""
    from sdar_export.cli import export
    from sdar_export.make_checkpoint import make_checkpoint

    ck = make_checkpoint(tmp_path / "moe", preset="tiny", seed=1, moe=True)
    art = export(ck, tmp_path / "art", max_context=32, quantize="int4", group_size=32, awq=True, quiet=True)
    a = json.loads((art / "manifest.json").read_text())["quantization"]
    assert a["method"] == "awq" and set(a["awq"]["alpha_per_layer"]) == {"qkv"}
    assert any("MoE" in s for s in a["awq"]["skipped"])
    assert max(a["validation"]["exact_max_abs"].values()) < 1e-4
