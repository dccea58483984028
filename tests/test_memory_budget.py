"""The device-memory budget (sdar_rt.memory_budget): its arithmetic on the released shapes, the
refusal message, and the JETSON.md table generated from it."""

from __future__ import annotations

from pathlib import Path

from sdar_rt import memory_budget as mb

ROOT = Path(__file__).resolve().parents[1]


def test_kv_cache_is_context_x_layers_x_2_x_batch_x_heads_x_dim_x_bytes():
    assert mb.kv_cache_bytes(28, 8, 128, 4096, 1, "float16") == 4096 * 28 * 2 * 8 * 128 * 2
    assert mb.kv_cache_bytes(28, 8, 128, 2048, 2, "float32") == 2048 * 28 * 2 * 2 * 8 * 128 * 4


def test_weights_of_qwen3_0_6b():
    """Qwen3-0.6B: 596,049,920 parameters with the tied embedding counted once (151,936 x 1,024
    = 155,582,464 of them), norms 28 x (2 x 1024 + 2 x 128) + 1024. TensorRT holds the LM head as
    a second tensor (the exported graph stores it transposed), norms in float32."""
    shape = mb.QWEN3_SHAPES["0.6B"]
    embedding = 151936 * 1024
    norms = 28 * (2 * 1024 + 2 * 128) + 1024
    linears = 596_049_920 - embedding - norms
    assert mb.weight_bytes(shape, "float16") == 2 * linears + 4 * norms + 2 * 2 * embedding
    # int4, group 128: half a byte per weight plus one fp16 scale per 128 weights; float embeddings
    assert mb.weight_bytes(shape, "float16", int4_group=128) == \
        linears // 2 + linears // 128 * 2 + 4 * norms + 2 * 2 * embedding
    # bfloat16 artifacts run float32 matmuls on TensorRT: four bytes per weight
    assert mb.weight_bytes(shape, "bfloat16") == 4 * linears + 4 * norms + 4 * 2 * embedding


def test_refusal_names_both_numbers_and_the_fixes():
    budget = mb.DeviceMemoryBudget(weights=3 << 30, kv_cache=1 << 30, scratch=1 << 29)
    assert mb.refusal(budget, 5 << 30, what="x", kv_per_token=1 << 18, block_length=4, max_context=4096,
                      quantized=False) is None
    msg = mb.refusal(budget, 4 << 30, what="model", kv_per_token=1 << 18, block_length=4, max_context=4096,
                     quantized=False)
    assert "needs 4.50 GiB" in msg and "4.00 GiB free" in msg
    assert "--max-context 2048 or less" in msg   # (4 - 3 - 0.5) GiB / 256 KiB per token
    assert "--int4" in msg
    msg = mb.refusal(budget, 4 << 30, what="model", kv_per_token=1 << 18, block_length=4, max_context=4096,
                     quantized=True)
    assert "--int4" not in msg and "--max-context 2048" in msg


def test_jetson_table_in_the_docs_is_the_generated_one():
    table = mb.jetson_table()
    assert table in (ROOT / "runtime" / "trt" / "JETSON.md").read_text(encoding="utf-8"), \
        "runtime/trt/JETSON.md's budget table is stale: paste `python -m sdar_rt.memory_budget`"
    rows = [r for r in table.splitlines()[2:]]
    assert len(rows) == 4 * 2 * 2   # 0.6B/1.7B/4B/8B x fp16/int4 x 2048/4096
    # the 8B in fp16 fits only the 64 GB board; in int4 the 16 GB one too
    assert rows[12].startswith("| 8B | fp16 | 2048") and rows[12].endswith("| no | no | yes |")
    assert rows[14].startswith("| 8B | int4 | 2048") and rows[14].endswith("| no | yes | yes |")
