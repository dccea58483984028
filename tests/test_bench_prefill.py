"""``python -m sdar_rt.bench.prefill`` on a tiny artifact: every number its report is read for is
there, positive and consistent with the others (the engine's time by phase too); both paths generate
the same tokens; the GEMM setting it uses for the old path does not leak into the process;
refusals. Speed is not asserted."""

from __future__ import annotations

import json
import os

import pytest
from sdar_fixtures import tiny_artifact
from sdar_rt.bench import prefill


def test_report_of_both_paths(tmp_path_factory, tmp_path, capsys):
    _, art = tiny_artifact(tmp_path_factory, "float32")
    out = tmp_path / "p.json"
    os.environ.pop(prefill.ENV, None)
    rc = prefill.main([str(art), "--tokens", "40", "--rounds", "3", "--threads", "1", "--json", str(out)])
    assert rc == 0
    assert prefill.ENV not in os.environ and prefill.AMX_ENV not in os.environ
    res = json.loads(out.read_text())
    (r,) = res["results"]
    assert r["prompt_tokens"] == 40 and r["weights"] == "float32" and r["same_tokens"] is True
    assert set(r["amx"]) == {"gemm", "small-m"} and r["amx"]["small-m"] is False
    assert isinstance(res["cpu_amx_usable"], bool)
    rates = r["prompt_tokens_per_second"]
    assert set(rates) == {"gemm", "small-m"}
    for s in rates.values():
        assert len(s["values"]) == 3 and all(v > 0 for v in s["values"])
        assert s["min"] <= s["median"] <= s["max"]
    ratios = r["gemm_over_small_m"]["values"]
    assert ratios == pytest.approx([g / s for g, s in zip(rates["gemm"]["values"], rates["small-m"]["values"],
                                                          strict=True)])
    # The engine's split of a call by phase: every phase there, none negative, and the phases' medians
    # adding up to about the call's engine time (each call's phases add up to its time exactly).
    for p in r["phase_seconds"].values():
        assert set(p) == {"seconds", "qkv", "attention", "o_proj", "gate_up", "down", "lm_head", "other"}
        assert all(v >= 0 for v in p.values()) and p["attention"] > 0 and p["qkv"] > 0
        assert sum(v for k, v in p.items() if k != "seconds") == pytest.approx(p["seconds"], rel=0.5)
    printed = capsys.readouterr().out
    assert "gemm / small-m per round" in printed and "engine seconds per call" in printed


def test_one_path_and_refusals(tmp_path_factory, capsys):
    _, art = tiny_artifact(tmp_path_factory, "float32")
    argv = [str(art), "--tokens", "8", "--rounds", "1", "--threads", "1"]
    assert prefill.main([*argv, "--paths", "gemm"]) == 0
    assert "gemm / small-m" not in capsys.readouterr().out
    assert prefill.main([str(art), "--tokens", "4000", "--rounds", "1"]) == 2
    assert "do not fit its context" in capsys.readouterr().err
    assert prefill.main([str(art), "--rounds", "0"]) == 2


def test_amx_paths(tmp_path_factory, tmp_path, capsys):
    """``--paths gemm no-amx``: the ratio per round, and which path the engine took (the setting for
    no-amx stays inside the benchmark)."""
    _, art = tiny_artifact(tmp_path_factory, "float32")
    out = tmp_path / "p.json"
    rc = prefill.main([str(art), "--tokens", "40", "--rounds", "2", "--threads", "1",
                       "--paths", "gemm", "no-amx", "--json", str(out)])
    assert rc == 0 and prefill.AMX_ENV not in os.environ
    (r,) = json.loads(out.read_text())["results"]
    assert not r["amx"]["no-amx"]
    assert len(r["gemm_over_no_amx"]["values"]) == 2 and "gemm_over_small_m" not in r
    assert "gemm / no-amx per round" in capsys.readouterr().out
