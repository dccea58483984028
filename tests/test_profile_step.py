"""``python -m sdar_export.profile_step``: where a step-graph forward goes, by operator type."""

from __future__ import annotations

import json

import pytest
from sdar_fixtures import tiny_artifact

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_parse_profile_groups_kernels_by_op_type_and_run():
    from sdar_export.profile_step import parse_profile

    def run(ts, dur):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}

    def kernel(ts, dur, op, name):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    fence = {"cat": "Node", "name": "x_fence_before", "ts": 1300, "dur": 0}
    events = [run(0, 100), kernel(10, 50, "MatMul", "mm"),                            # warm-up: skipped
              run(1000, 400), kernel(1010, 100, "MatMul", "mm"), kernel(1200, 20, "Reshape", "r1"),
              kernel(1250, 30, "Reshape", "r2"), fence,
              run(2000, 600), kernel(2010, 300, "MatMul", "mm"), kernel(2400, 10, "Reshape", "r1"),
              kernel(2450, 10, "Reshape", "r2"),
              kernel(5000, 999, "MatMul", "mm")]                                        # outside every run
    ms, nodes, kernel_ms, wall = parse_profile(events, skip_runs=1)
    # per node: the median over the 2 measured runs; per op type: the sum over its nodes
    assert ms == {"MatMul": pytest.approx(0.2), "Reshape": pytest.approx(0.015 + 0.02)}
    assert nodes == {"MatMul": 1, "Reshape": 2}
    assert kernel_ms == pytest.approx(0.235) and wall == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no measured model_run"):
        parse_profile(events, skip_runs=3)


def test_profile_command_on_an_artifact(tmp_path_factory, tmp_path, capsys):
    from sdar_export.profile_step import main

    _, art = tiny_artifact(tmp_path_factory)
    out = tmp_path / "profile.json"
    assert main([str(art), "--tokens", "4", "8", "--runs", "2", "--past", "8", "--threads", "1",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| op type | sdar_rt T=4 ms (nodes) | sdar_rt T=8 ms (nodes) |" in table
    assert "| SkipSimplifiedLayerNormalization |" in table and "| forward, no profiler |" in table
    (entry,) = json.loads(out.read_text())
    p4, p8 = entry["profiles"]
    assert (p4["tokens"], p8["tokens"]) == (4, 8)
    # 2 layers: q/k/v + gate/up fused, o_proj, down_proj, 4 attention products each, and the LM head
    assert p4["ops"]["MatMul"]["nodes"] + p4["ops"].get("FusedMatMul", {}).get("nodes", 0) == 2 * 8 + 1
    assert p4["forward_ms"] > 0 and p4["kernel_ms"] > 0


def test_profile_command_bad_input(tmp_path, capsys):
    from sdar_export.profile_step import main

    with pytest.raises(SystemExit, match="no step.onnx"):
        main([str(tmp_path)])
    with pytest.raises(SystemExit, match="not an artifact dir or an .onnx file"):
        main([str(tmp_path / "missing.onnx")])
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--ort-genai", str(tmp_path), str(tmp_path)])
    assert "one model dir per artifact" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="genai_config.json"):
        from sdar_export.profile_step import genai_decoder
        genai_decoder(tmp_path)
