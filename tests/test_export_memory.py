"""sdar-export's memory and disk bounds, measured on a model large enough for its weights to
dominate what a stage holds (~180 MB checkpoint, the proportions of the released models: the
vocabulary table about a sixth of the weights), so that they cannot silently grow back:

* every stage's peak resident memory, above what the process held before the export (after a
  warm-up export of a tiny checkpoint: the libraries' imports and one-time set-up are not the
  model's), is at most 1.5x the checkpoint's size (measured 1.0-1.1x), and no stage keeps half of it
  afterwards (measured under 0.3x: what the libraries keep, not weights). The design holds one
  tensor (or one layer, or one validation segment) at a time; the exporter before it held 10-16x
  the checkpoint while writing the graphs.
* the ONNX part of the artifact (the graph files and the one weights file they share) is at most
  1.1x the weights it stores, computed here from the config: each float tensor once in the
  artifact's dtype (the tied LM head with the embedding table), quantized ones at 4 bits plus their
  float32 scales.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sdar_export.make_checkpoint import make_checkpoint

SHAPE = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=6, num_attention_heads=16,
             num_key_value_heads=8, head_dim=64, vocab_size=16000, max_position_embeddings=2048,
             tie_word_embeddings=True)
CHILD = Path(__file__).with_name("export_memory_child.py")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    return (make_checkpoint(root / "model", seed=7, dtype="bfloat16", **SHAPE),
            make_checkpoint(root / "warm-up", seed=8, dtype="bfloat16", tie_word_embeddings=True))


def _export(checkpoints, out: Path, options: dict) -> dict:
    r = subprocess.run([sys.executable, str(CHILD), str(checkpoints[0]), str(checkpoints[1]), str(out),
                        json.dumps(options)], capture_output=True, text=True, timeout=900, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _stored_weights(options: dict) -> int:
    """The bytes of weights the graphs need, from the config alone."""
    H, inter = SHAPE["hidden_size"], SHAPE["intermediate_size"]
    n, V = SHAPE["num_hidden_layers"], SHAPE["vocab_size"]
    q, kv = SHAPE["num_attention_heads"] * SHAPE["head_dim"], SHAPE["num_key_value_heads"] * SHAPE["head_dim"]
    linears = [(q, H), (kv, H), (kv, H), (H, q), (inter, H), (inter, H), (H, inter)] * n     # [out, in]
    size = 2 if options.get("dtype") == "float16" else 4
    if options.get("quantize") == "int4":    # 4 bits + a float32 scale per 128 inputs
        body = sum(o * i // 2 + o * (i // 128) * 4 for o, i in linears)
    else:
        body = sum(o * i for o, i in linears) * size
    norms = (2 * H + 2 * SHAPE["head_dim"]) * n * 4 + H * 4
    return body + V * H * size + norms


@pytest.mark.parametrize("options", [{"quantize": "int4", "max_context": 256},
                                     {"dtype": "float16", "max_context": 256}], ids=["int4", "fp16"])
def test_stage_peaks_and_artifact_size_are_bounded(checkpoints, tmp_path, options):
    out = tmp_path / "art"
    res = _export(checkpoints, out, options)
    ck, base = res["checkpoint_bytes"], res["base"]
    assert 150e6 < ck < 250e6
    names = [s["name"] for s in res["stages"]]
    assert "export ONNX graphs" in names and any(n.startswith("validate with ONNX Runtime") for n in names)
    for s in res["stages"]:
        assert s["peak"] - base <= 1.5 * ck, (s["name"], (s["peak"] - base) / ck)
        assert s["after"] - base <= 0.5 * ck, (s["name"], (s["after"] - base) / ck)
    onnx_bytes = sum(p.stat().st_size for p in out.iterdir() if p.name.endswith((".onnx", ".onnx.data")))
    assert onnx_bytes <= 1.1 * _stored_weights(options), onnx_bytes / _stored_weights(options)
