"""sdar-bench's llama.cpp baseline: the GGUF format chosen per sdar_rt weight format, the comparison
reported as skipped with its reason when llama.cpp is missing or does not build, and, where llama.cpp
is built already (or with SDAR_TEST_LLAMA_CPP=1, which fetches and builds it: minutes), the whole
comparison on a tiny checkpoint: converted by llama.cpp's converter, quantized by llama-quantize,
timed by llama-bench, against sdar_rt float32 and int4.

Without a build the plumbing test is skipped (said so in pytest's summary), never counted as passed.
No timing assertions: only relations that hold by construction."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

import pytest

ARGV = ["--warmup", "0", "--max-new-tokens", "8", "--threads", "1", "--max-context", "128",
        "--min-run-seconds", "0", "--runs", "2"]


def _real_llama_home() -> Path:
    """The llama.cpp home of this user's cache, read before the tests move the cache to a tmp dir."""
    from sdar_rt.bench import llamacpp_tools

    return llamacpp_tools.home()


REAL_HOME = _real_llama_home()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("sdar_export.cli")
    from sdar_export.make_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("bench-llama")
    make_checkpoint(root / "ck", preset="tiny", seed=0, moe=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        mp.setenv("SDAR_LLAMA_CPP_HOME", str(REAL_HOME))
        yield root


def _main(argv) -> tuple[int, str]:
    from sdar_rt import bench

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = bench.main(argv)
    return status, err.getvalue()


def test_gguf_types_follow_the_artifacts_weights():
    from sdar_rt.bench.llamacpp import gguf_type, model_tag

    assert gguf_type("float32", None) == ("f32", [])
    assert gguf_type("float16", None) == ("f16", [])
    q4 = {"weights": "int4", "group_size": 128, "lm_head": "int4"}
    every = ["--pure", "--output-tensor-type", "q4_0", "--token-embedding-type", "q4_0"]
    assert gguf_type("float32", q4) == ("q4_0", every)
    assert model_tag("float32", q4) == "q4_0-pure-head-q4_0"
    assert gguf_type("float32", {**q4, "lm_head": "int8"})[1][2] == "q8_0"
    assert gguf_type("float32", {**q4, "lm_head": "float32"})[1][2] == "f32"
    assert gguf_type("float32", {"weights": "int8", "lm_head": "int8"})[0] == "q8_0"
    with pytest.raises(ValueError, match="no GGUF type for int3"):
        gguf_type("float32", {"weights": "int3"})
    with pytest.raises(ValueError, match="bfloat16"):
        gguf_type("bfloat16", None)


def _skip_reason(tiny, tmp_path, source: Path) -> str:
    out = tmp_path / "r.json"
    status, err = _main([str(tiny / "ck"), *ARGV, "--baselines", "llama.cpp", "--llama-cpp", str(source),
                         "--json", str(out)])
    assert status == 0, err
    (comp,) = json.loads(out.read_text())["comparisons"]
    assert comp["kind"] == "llama.cpp" and set(comp) == {"skipped", "kind", "title"}
    assert f"skipped: {comp['skipped']}" in err and "sdar_rt vs llama.cpp: skipped" in err
    return comp["skipped"]


def test_missing_llama_cpp_is_reported_as_skipped(tiny, tmp_path):
    from sdar_rt.bench.llamacpp_tools import converter_missing

    reason = _skip_reason(tiny, tmp_path, tmp_path / "no-such-tree")
    assert reason == (converter_missing() or f"{tmp_path / 'no-such-tree'} is not a llama.cpp source tree "
                      "(no CMakeLists.txt)")


def test_llama_cpp_that_does_not_build_is_reported_as_skipped(tiny, tmp_path, monkeypatch):
    """A source tree whose CMake configuration fails: skipped, with CMake's own message; the failed
    build is retried on the next run rather than taken for a build."""
    from sdar_rt.bench.llamacpp_tools import converter_missing

    monkeypatch.setenv("SDAR_LLAMA_CPP_HOME", str(tmp_path / "home"))
    tree = tmp_path / "broken-llama.cpp"
    (tree / "gguf-py").mkdir(parents=True)
    (tree / "convert_hf_to_gguf.py").write_text("raise SystemExit('not run')\n")
    (tree / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(broken CXX)\n"
        "message(FATAL_ERROR \"this tree is broken\")\n"
    )
    reason = _skip_reason(tiny, tmp_path, tree)
    if converter_missing():
        assert reason == converter_missing()
        return
    assert reason.startswith("cmake configure failed (exit 1)") and "this tree is broken" in reason
    again = _skip_reason(tiny, tmp_path, tree)
    assert again.startswith("cmake configure failed (exit 1)") and "this tree is broken" in again


def test_llama_cpp_is_built_for_the_instruction_set_of_a_narrower_kernel_table():
    """Against the table this CPU picks itself, llama.cpp is built natively; against a narrower one
    (what a CPU with only AVX2 would run), for that table's instruction set."""
    from sdar_rt.bench.llamacpp_tools import isa_for

    available = ["avx512vnni", "avxvnni", "avx2", "scalar"]
    assert isa_for("auto", available) is None
    assert isa_for("avx512vnni", available) is None
    assert isa_for("avxvnni", available) == "avxvnni"
    assert isa_for("avx2", available) == "avx2"
    assert isa_for("avx2", ["avx2", "scalar"]) is None
    assert isa_for("scalar", available) is None  # no llama.cpp build without SIMD: native, said in the row


@pytest.mark.parametrize(
    "isa, expected",
    [
        (None, "native=ON avx2= avx_vnni= avx512= avx512_vnni= amx_int8="),
        ("avx2", "native=OFF avx2=ON avx_vnni=OFF avx512=OFF avx512_vnni= amx_int8="),
        ("avxvnni", "native=OFF avx2=ON avx_vnni=ON avx512=OFF avx512_vnni= amx_int8="),
        ("avx512vnni", "native=OFF avx2=ON avx_vnni= avx512=ON avx512_vnni=ON amx_int8=OFF"),
    ],
)
def test_llama_cpp_build_options_per_instruction_set(tmp_path, isa, expected):
    """The options CMake receives, read back by a tree whose configuration prints them and fails."""
    from sdar_rt.bench.llamacpp_tools import LlamaCppUnavailable, build_tools

    tree = tmp_path / "options-llama.cpp"
    tree.mkdir()
    names = {"native": "NATIVE", "avx2": "AVX2", "avx_vnni": "AVX_VNNI", "avx512": "AVX512",
             "avx512_vnni": "AVX512_VNNI", "amx_int8": "AMX_INT8"}
    shown = " ".join(f"{k}=${{GGML_{v}}}" for k, v in names.items())
    (tree / "CMakeLists.txt").write_text(
        f'cmake_minimum_required(VERSION 3.14)\nproject(options NONE)\nmessage(FATAL_ERROR "{shown}")\n'
    )
    with pytest.raises(LlamaCppUnavailable, match="cmake configure failed") as err:
        build_tools(tree, tmp_path / "build", isa, log=lambda m: None)
    assert expected in str(err.value)
    with pytest.raises(ValueError, match="no llama.cpp build for instruction set 'neon'"):
        build_tools(tree, tmp_path / "build", "neon", log=lambda m: None)


def _crashing_tree(root: Path) -> Path:
    """A llama.cpp source tree whose converter writes a placeholder GGUF and whose llama-bench dies of
    an illegal instruction, as a build for instructions the CPU or system does not allow does."""
    tree = root / "crashing-llama.cpp"
    (tree / "gguf-py").mkdir(parents=True)
    (tree / "convert_hf_to_gguf.py").write_text(
        "import sys\n"
        "class TextModel:\n"
        "    def get_vocab_base_pre(self, tokenizer):\n"
        "        return 'qwen2'\n"
        "def main():\n"
        "    out = sys.argv[sys.argv.index('--outfile') + 1]\n"
        "    open(out, 'wb').write(b'GGUF')\n"
    )
    (tree / "bench.c").write_text("#include <signal.h>\nint main(void) { raise(SIGILL); return 0; }\n")
    (tree / "quantize.c").write_text("int main(void) { return 1; }\n")
    (tree / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(crashing C)\n"
        "set(CMAKE_RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)\n"
        "add_executable(llama-bench bench.c)\nadd_executable(llama-quantize quantize.c)\n"
    )
    return tree


def test_llama_bench_that_crashes_is_reported_as_skipped(tiny, tmp_path, monkeypatch):
    """llama-bench killed by a signal while timed: that comparison is skipped with the signal named and
    what to do; the run goes on and writes its report."""
    from sdar_rt.bench.llamacpp_tools import converter_missing

    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler to build the stand-in llama.cpp tools")
    monkeypatch.setenv("SDAR_LLAMA_CPP_HOME", str(tmp_path / "home"))
    reason = _skip_reason(tiny, tmp_path, _crashing_tree(tmp_path))
    if converter_missing():
        assert reason == converter_missing()
        return
    assert reason.startswith("llama-bench failed (killed by SIGILL: it ran an instruction")
    assert "--llama-cpp-isa avx2" in reason


def test_tool_exit_reasons():
    from sdar_rt.bench.llamacpp import _exit_reason

    assert _exit_reason(3) == "exit 3"
    assert _exit_reason(-9) == "killed by SIGKILL"
    assert _exit_reason(-4).startswith("killed by SIGILL: ")


def _built_or_skip():
    """llama.cpp's tools from the real home and the instruction set they were built for: as built there,
    or fetched and built now when the opt-in variable is set; skips the test otherwise. On x86-64 the
    AVX2 build: a native build can carry instructions the system refuses (the pinned release's AMX code
    dies of SIGILL on a Xeon with AMX), which is a peer's failure, not what this test is about."""
    from sdar_rt import _core
    from sdar_rt.bench import llamacpp_tools

    if why := llamacpp_tools.converter_missing():
        pytest.skip(why)
    isa = "avx2" if "avx2" in _core.cpu_kernels_available() else None
    build = REAL_HOME / llamacpp_tools.LLAMA_CPP_PYTHON / ("build" if isa is None else f"build-{isa}")
    if llamacpp_tools._built(build) is None and os.environ.get("SDAR_TEST_LLAMA_CPP") != "1":
        pytest.skip(f"llama.cpp is not built here ({build}); SDAR_TEST_LLAMA_CPP=1 fetches and builds it "
                    "(minutes)")
    return llamacpp_tools.tools(None, log=lambda m: print(m, file=sys.stderr), isa=isa), isa or "native"


def _gguf_types(tools, path: Path) -> dict[str, str]:
    """Tensor name -> GGML type name, read with llama.cpp's own gguf-py."""
    sys.path.insert(0, str(tools.source / "gguf-py"))
    try:
        import gguf
    finally:
        sys.path.pop(0)
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def test_llama_cpp_comparison_float32_and_int4(tiny, tmp_path):
    tools, isa = _built_or_skip()
    out = tmp_path / "llama.json"
    status, err = _main([str(tiny / "ck"), *ARGV, "--baselines", "llama.cpp", "--int4", "--lm-head-bits", "4",
                         "--llama-cpp-isa", isa, "--json", str(out)])
    assert status == 0, err
    report = json.loads(out.read_text())
    comps = {c["kind"]: c for c in report["comparisons"]}
    assert list(comps) == ["int4", "llama.cpp", "llama.cpp-int4"]
    f32, q4 = comps["llama.cpp"], comps["llama.cpp-int4"]
    assert "skipped" not in f32 and "skipped" not in q4, (f32, q4)
    assert f32["second"]["weights"] == "GGUF f32" and q4["second"]["weights"] == "GGUF q4_0-pure-head-q4_0"
    assert q4["first"]["weights"].startswith("int4 g128, LM head int4")
    for c in (f32, q4):
        a, b = c["first"], c["second"]
        assert b["system"] == "llama.cpp" and b["threads"] == 1 and c["rate"] == "decode"
        assert b["llama_cpp_isa"] == isa
        # llama-bench's tg: one repetition per prompt and round, each the tokens sdar_rt generated on average
        assert b["calls"] == 2 * len(report["settings"]["prompts"]) and b["tokens"] > 0
        assert b["ms_per_token_after_prefill"] == pytest.approx(1e3 / b["decode_tokens_per_second"])
        per_token = b["ms_per_token_after_prefill"]
        assert c["break_even_tpf"] == pytest.approx(a["wall_ms_per_decode_forward"] / per_token)
        assert c["ratio_runs"]["min"] <= c["ratio"] <= c["ratio_runs"]["max"]
        assert c["ratio"] == pytest.approx(statistics.median(c["ratio_runs"]["values"]))
        pp = c["prompt_processing"]
        assert pp["prompt_tokens"] == 124  # max context 128 less one block of 4, a whole number of blocks
        assert len(pp["ratio_runs"]["values"]) == 2
        assert pp["ratio"] == pytest.approx(statistics.median(
            x / y for x, y in zip(pp["sdar_rt_tokens_per_second"]["values"],
                                  pp["peer_tokens_per_second"]["values"], strict=True)))
        assert "prompt processing (124 tokens)" in err
    # the GGUF files are llama.cpp's conversion of the same weights, every matrix Q4_0 in the int4 one
    folder = next((REAL_HOME / "gguf").glob(f"ck-*-{tools.version}"))
    f32_types = _gguf_types(tools, folder / "f32.gguf")
    q4_types = _gguf_types(tools, folder / "q4_0-pure-head-q4_0.gguf")
    assert set(f32_types) == set(q4_types) and "output.weight" in q4_types
    matrices = [n for n in q4_types if n.endswith(".weight") and "norm" not in n]
    assert {f32_types[n] for n in matrices} == {"F32"}
    assert {q4_types[n] for n in matrices} == {"Q4_0"}
