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
    # the 8B in fp16 fits only the 64 GB board; in int4 the 16 GB one runs it but cannot build it
    assert rows[12].startswith("| 8B | fp16 | 2048") and rows[12].endswith("| no | no | build + run |")
    assert rows[14].startswith("| 8B | int4 | 2048") and rows[14].endswith("| no | run | build + run |")
    # the 1.7B in fp16 runs on an Orin Nano, but its build (three copies of 3.8 GiB) does not fit there
    assert rows[4].startswith("| 1.7B | fp16 | 2048")
    assert rows[4].endswith("| run | build + run | build + run |")


def test_build_peak_holds_three_copies_of_the_weights_without_a_stream_writer():
    w, ws = 3 << 30, 1 << 30
    peak = mb.build_peak(w, ws, stream_writer=False)   # TensorRT 10.3 (JetPack 6)
    assert (peak.device, peak.host, peak.total) == (w + ws, 2 * w, 3 * w + ws)
    assert "serialized plan" in peak.parts
    peak = mb.build_peak(w, ws, stream_writer=True)    # 10.14+: the plan goes to the file as it is made
    assert (peak.device, peak.host) == (w + ws, w)


def test_load_peak_counts_a_host_copy_of_the_plan_only_when_there_is_one():
    budget = mb.DeviceMemoryBudget(weights=3 << 30, kv_cache=1 << 28, scratch=1 << 28)
    read = mb.load_peak(budget, 3 << 30, plan_in_host_memory=True)
    assert read.total == 6 << 30 and read.host == 3 << 30
    mapped = mb.load_peak(budget, 3 << 30, plan_in_host_memory=False)
    assert mapped.total == budget.total and mapped.host == 0


def test_available_memory_on_an_integrated_gpu_is_what_the_os_reports(monkeypatch):
    monkeypatch.setattr(mb, "host_memory", lambda: (6 << 30, 2 << 30))
    shared = mb.available_memory(True, cuda_free=1 << 30)   # cudaMemGetInfo's figure is not used
    assert (shared.device, shared.host, shared.shared) == (6 << 30, 8 << 30, True)
    assert shared.describe() == "6.00 GiB of RAM available and 2.00 GiB of swap"
    discrete = mb.available_memory(False, cuda_free=1 << 30)
    assert (discrete.device, discrete.host, discrete.shared) == (1 << 30, 8 << 30, False)
    assert mb.available_memory(False, cuda_free=None) is None


def test_real_host_memory_is_read():
    available, swap = mb.host_memory()
    assert available > 0 and swap >= 0


def test_peak_refusal_on_shared_ram():
    peak = mb.build_peak(3 << 30, 1 << 30, stream_writer=False)   # device 4 GiB, host 6 GiB
    ram = mb.Available(device=6 << 30, host=6 << 30, shared=True, source="MemAvailable")
    msg = mb.peak_refusal(peak, ram, ["re-export with --int4"])
    assert msg.startswith("the TensorRT engine build needs 10.00 GiB at its peak")
    assert "6.00 GiB of RAM available" in msg and "--int4" in msg and "add swap" in msg
    # with 4 GiB of swap the host copies fit
    assert mb.peak_refusal(peak, mb.Available(6 << 30, 10 << 30, True, "MemAvailable"), []) is None
    # swap cannot hold the device part: no swap advice then
    msg = mb.peak_refusal(peak, mb.Available(3 << 30, 100 << 30, True, "MemAvailable"), [])
    assert msg is not None and "swap" not in msg.split("; ", 1)[1]


def test_trt_generator_on_an_integrated_gpu_checks_available_ram(tmp_path_factory, monkeypatch):
    """Generator(engine='trt') on Jetson: refused or admitted by the RAM the OS reports available,
    not by cudaMemGetInfo's free figure (which leaves out the reclaimable page cache)."""
    import json
    import shutil

    import pytest
    from sdar_fixtures import tiny_artifact
    from sdar_rt import _core, trt_engine
    from sdar_rt.artifact import load_artifact

    art = tmp_path_factory.mktemp("jetson") / "art"
    shutil.copytree(tiny_artifact(tmp_path_factory)[1], art)
    m = json.loads((art / "manifest.json").read_text())
    m["engines"] = [{"kind": "trt", "graph": "trt", "file": "trt.plan", "gpu": "Orin",
                     "compute_capability": "8.7", "integrated": True, "tensorrt": "10.3.0",
                     "profiles": {"prefill": 0, "decode": 1},
                     "prefill_chunk": 8, "plan_bytes": 3 << 30, "scratch_bytes": 100 << 20}]
    (art / "manifest.json").write_text(json.dumps(m))
    (art / "trt.plan").write_bytes(b"plan")
    a = load_artifact(art)
    plan = trt_engine.trt_plan(a)
    monkeypatch.setattr(_core, "cuda_device_count", lambda: 1, raising=False)
    monkeypatch.setattr(_core, "cuda_memory_info", lambda: (1 << 30, 8 << 30), raising=False)
    monkeypatch.setattr(mb, "host_memory", lambda: (6 << 30, 0))
    assert trt_engine.check_device_memory(a, plan).weights == 3 << 30
    monkeypatch.setattr(mb, "host_memory", lambda: (2 << 30, 8 << 30))   # swap holds no device memory
    with pytest.raises(MemoryError, match=r"needs 3\.\d\d GiB .* 2\.00 GiB free"):
        trt_engine.check_device_memory(a, plan)
