"""``python -m sdar_rt.bench.kernels``: its report on tiny shapes, the forward mode on a tiny artifact,
and its refusals. Speed itself is not asserted (benchmarks, not tests); what is checked is that every
number the report is read for is there, positive and consistent with the others."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from sdar_fixtures import tiny_artifact

pytest.importorskip("onnx")

from sdar_rt import _core  # noqa: E402
from sdar_rt.bench import kernels  # noqa: E402


def test_kernel_table_on_small_shapes(tmp_path, capsys):
    out = tmp_path / "k.json"
    rc = kernels.main(["--matrices", "2", "--shape", "64x96", "--block", "32", "--rows", "1", "4",
                       "--formats", "q4", "q8", "f32", "--repeats", "2", "--threads", "1",
                       "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["format"] for r in res["results"]] == ["q4", "q8", "f32"]
    for r in res["results"]:
        assert [row["rows"] for row in r["rows"]] == [1, 4]
        assert r["rows"][0]["ours_vs_first_rows"] == 1.0
        for row in r["rows"]:
            assert row["ours_ms"] > 0 and row["ort_ms"] > 0
            assert row["ours_over_ort"] == pytest.approx(row["ours_ms"] / row["ort_ms"])
        assert r["memory_read_ms"] > 0
    # q4 codes are half a byte, q8 one byte, f32 four: the bytes the kernels stream
    sizes = {r["format"]: r["weight_bytes"] for r in res["results"]}
    assert sizes["q4"] < sizes["q8"] < sizes["f32"]
    assert "ours ms" in capsys.readouterr().out


def test_forward_mode_splits_the_cpu_engine_forward(tmp_path_factory, tmp_path):
    _, art = tiny_artifact(tmp_path_factory, "float32")
    out = tmp_path / "f.json"
    assert kernels.main(["--artifact", str(art), "--past", "8", "--repeats", "3", "--threads", "1",
                         "--json", str(out)]) == 0
    (res,) = json.loads(out.read_text())["results"]
    assert [(r["kind"], r["tokens"]) for r in res["rows"]] == [("decode", 4), ("fused", 8)]
    for r in res["rows"]:
        phases = r["cpu_phases_ms"]
        assert set(phases) == {"qkv", "attention", "o_proj", "gate_up", "down", "lm_head", "other"}
        assert all(v >= 0 for v in phases.values())
        # the phases are consecutive laps of one clock from the start of run() to its last lap, and the
        # engine's total reads the same clock once more right after: equal but for that last read
        assert r["cpu_mean_ms"] > 0
        assert sum(phases.values()) == pytest.approx(r["cpu_mean_ms"], rel=1e-3)


def test_several_kernel_tables_in_the_same_rounds(tmp_path, capsys):
    out = tmp_path / "k.json"
    assert kernels.main(["--matrices", "2", "--shape", "64x96", "--block", "32", "--rows", "1", "5",
                         "--formats", "q4", "--repeats", "3", "--threads", "1", "--kernels", "auto", "scalar",
                         "--json", str(out)]) == 0
    (res,) = json.loads(out.read_text())["results"]
    assert res["kernels"] == _core.cpu_kernels_available()[0]      # the first table is "ours"
    for row in res["rows"]:
        (other,) = row["tables"].values()
        assert list(row["tables"]) == ["scalar"]
        assert other["ms"] > 0 and other["vs_first_table"] > 0
    assert "kernels scalar" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--shape", "1024by3072"], "--shape must be KxN"),
    (["--shape", "100x64", "--block", "32"], "must be a multiple of 32 dividing K"),
    (["--kernels", "auto", "sse9"], "--kernels sse9: this build and CPU run"),
])
def test_bad_shapes_are_refused(argv, message, capsys):
    assert kernels.main(argv) == 2
    assert message in capsys.readouterr().err


def test_rounds_balance_the_order_of_the_sides():
    """Over 2n rounds every side is first equally often and runs before each other side as often as after."""
    sides = ["a", "b", "c"]
    rounds = [kernels._rotated(sides, i) for i in range(2 * len(sides))]
    assert all(sorted(r) == sides for r in rounds)
    assert Counter(r[0] for r in rounds) == {"a": 2, "b": 2, "c": 2}
    before = Counter((x, y) for r in rounds for i, x in enumerate(r) for y in r[i + 1:])
    assert set(before.values()) == {3} and len(before) == 6
