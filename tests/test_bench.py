"""sdar-bench on a tiny random checkpoint: the JSON report's fields, the equality checks (fused vs
separate commit, PyTorch reference), and that a reference giving other tokens stops the benchmark.
No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("sdar_export.cli")
    from sdar_export.make_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("bench")
    make_checkpoint(root / "ck", preset="tiny", seed=0, moe=False)
    return root


@pytest.fixture()
def bench(tiny, monkeypatch):
    from sdar_rt import bench, bench_artifacts

    monkeypatch.setattr(bench_artifacts, "cache_dir", lambda: tiny / "cache")  # exports cached per module
    return bench


def _argv(tiny, out):
    return [
        str(tiny / "ck"),
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "8",
        "--threads",
        "1",
        "--max-context",
        "128",
        "--baselines",
        "reference,ar",
        "--json",
        str(out),
        "--plot",
        str(out) + ".png",
    ]


def test_report_fields_and_equality(tiny, bench, tmp_path):
    out = tmp_path / "bench.json"
    assert bench.main([*_argv(tiny, out), "--engine", "ort"]) == 0   # ort_seconds: ONNX Runtime's share
    report = json.loads(out.read_text())
    assert report["equality"]["passed"] is True
    checks = [c["check"] for c in report["equality"]["checks"]]
    assert any(c.startswith("fused vs separate commit") for c in checks)
    assert "reference (PyTorch) vs sdar_rt" in checks
    assert {r["config"]["commit"] for r in report["results"]} == {"fused", "separate"}
    for row in report["results"] + [report["baselines"]["reference"], report["baselines"]["ar"]]:
        for key in (
            "tokens_per_second",
            "tpf",
            "nfe_per_call",
            "time_to_first_block_ms",
            "block_latency_ms",
            "peak_rss_mib",
            "wall_seconds",
            "tokens",
            "calls",
        ):
            assert key in row, key
        assert set(row["block_latency_ms"]) >= {"median", "p90", "p99"}
        assert row["tokens"] > 0 and row["tokens_per_second"] > 0
    fused = report["results"][0]
    for key in ("engine_seconds", "host_fraction", "ort_seconds", "ms_per_decode_forward", "prefill_seconds"):
        assert fused[key] is not None, key
    assert 0.0 <= fused["host_fraction"] < 1.0
    # the rate after the prompt's prefill: same tokens over the wall time less the prefill phase
    assert 0.0 < fused["prefill_seconds"] < fused["wall_seconds"]
    assert fused["decode_tokens_per_second"] == pytest.approx(
        fused["tokens"] / (fused["wall_seconds"] - fused["prefill_seconds"]))
    assert fused["nfe_per_call"]["fused"] > 0 and report["results"][1]["nfe_per_call"]["commit"] > 0
    for name in ("reference", "ar"):
        assert report["baselines"][name]["sdar_rt_speedup"] > 0
    assert report["baselines"]["ar"]["config"]["block_length"] == 1
    assert {t["target"].split(" ")[0] for t in report["targets"]} >= {"tokens/s", "host"}
    assert report["machine"]["logical_cpus"] >= 1 and "jetson" in report["machine"]
    assert report["settings"]["prompt_token_lengths"]


def test_mismatched_reference_is_detected(tiny, bench, tmp_path, monkeypatch, capsys):
    from sdar_rt import bench_reference

    real = bench_reference.ReferenceDecoder.generate

    def wrong(self, prompt, **kw):
        r = real(self, prompt, **kw)
        r["token_ids"] = [(r["token_ids"][0] + 1) % 7] + r["token_ids"][1:] if r["token_ids"] else [1]
        return r

    monkeypatch.setattr(bench_reference.ReferenceDecoder, "generate", wrong)
    out = tmp_path / "bad.json"
    assert bench.main(_argv(tiny, out)) == 3
    assert "MISMATCH" in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["equality"]["passed"] is False
    assert "reference" in report["error"]
    assert report["results"] == [] and report["baselines"] == {}  # no speed without equal tokens


def test_int4_comparison(tiny, bench, tmp_path):
    """--int4: the same checkpoint exported with 4-bit weights (8-bit LM head) runs the primary
    configuration; rates, ratios, token agreement and TPF change are reported per weight format."""
    out = tmp_path / "int4.json"
    argv = _argv(tiny, out)
    argv[argv.index("--baselines") + 1] = ""
    assert bench.main([*argv, "--int4", "--group-size", "32", "--lm-head-bits", "8"]) == 0
    report = json.loads(out.read_text())
    w = report["weights"]
    assert w["config"]["commit"] == "fused" and w["config"]["batch"] == 1
    flt, q = w["rows"]
    assert (flt["weights"], flt["lm_head"]) == ("float32", "float32")
    assert (q["weights"], q["lm_head"], q["group_size"]) == ("int4", "int8", 32)
    manifest = json.loads((Path(q["artifact"]) / "manifest.json").read_text())
    assert manifest["quantization"]["lm_head"] == "int8" and "int4-g32-head8" in q["artifact"]
    fused = report["results"][0]
    assert flt["tokens_per_second"] == fused["tokens_per_second"] and flt["tpf"] == fused["tpf"]
    assert q["speedup"] == pytest.approx(q["tokens_per_second"] / flt["tokens_per_second"])
    decode_ratio = q["decode_tokens_per_second"] / flt["decode_tokens_per_second"]
    assert q["decode_speedup"] == pytest.approx(decode_ratio)
    assert q["tpf_change"] == pytest.approx(q["tpf"] - flt["tpf"])
    assert w["met"] == (q["speedup"] >= w["target_speedup"] == 2.0)
    assert q["rows"] == fused["calls"] and q["tokens_compared"] >= fused["tokens"]
    assert 0.0 <= q["token_agreement"] <= 1.0 and 0 <= q["rows_equal"] <= q["rows"]
    assert any(line.startswith("int4 (LM head int8, group 32) vs float32") for line in report["summary"])


def test_token_agreement():
    from sdar_rt.bench_weights import token_agreement

    ours = [[[1, 2, 3]], [[4, 5]], [[6, 7, 8, 9]]]
    theirs = [[[1, 2, 3]], [[4, 0]], [[6, 7]]]   # one token differs; a row two tokens shorter
    r = token_agreement(ours, theirs)
    assert (r["tokens_equal"], r["tokens_compared"], r["rows_equal"], r["rows"]) == (6, 9, 1, 3)
    assert r["token_agreement"] == pytest.approx(6 / 9) and r["row_agreement"] == pytest.approx(1 / 3)


def test_int4_options_need_int4(bench, tiny, capsys):
    assert bench.main([str(tiny / "ck"), "--lm-head-bits", "8"]) == 2
    assert "add --int4" in capsys.readouterr().err


def test_bench_import_does_not_import_torch():
    code = (
        "import sys, sdar_rt.bench, sdar_rt.bench_runs, sdar_rt.bench_report, sdar_rt.bench_artifacts, "
        "sdar_rt.bench_ortgenai, sdar_rt.bench_reference, sdar_rt.bench_weights; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_baseline_is_an_error(bench, tiny, capsys):
    assert bench.main([str(tiny / "ck"), "--baselines", "nope"]) == 2
    assert "unknown baseline" in capsys.readouterr().err
