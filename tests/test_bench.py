"""sdar-bench on a tiny random checkpoint: the JSON report's fields, the equality checks (fused vs
separate commit, PyTorch reference), the comparisons in alternating rounds, and that a reference
giving other tokens stops the benchmark. No timing assertions: only relations that hold by
construction (a ratio is the median of its rounds, the break-even TPF is a quotient of two shown
costs)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

# --min-run-seconds 0: one pass over the prompt set per run (the default repeats the tiny model's
# few-ms pass for half a second; test_runs_last_long_enough covers that)
ARGV = ["--warmup", "0", "--max-new-tokens", "8", "--threads", "1", "--max-context", "128",
        "--min-run-seconds", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("sdar_export.cli")
    from sdar_export.make_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("bench")
    make_checkpoint(root / "ck", preset="tiny", seed=0, moe=False)
    with pytest.MonkeyPatch.context() as mp:  # every export of this module lands in one fresh cache
        mp.setenv("XDG_CACHE_HOME", str(root / "cache"))
        yield root


@pytest.fixture(scope="module")
def bench(tiny):
    from sdar_rt import bench

    return bench


def _main(bench, argv) -> tuple[int, str]:
    """bench.main with stderr captured (rich's console writes to the sys.stderr of the moment)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = bench.main(argv)
    return status, err.getvalue()


@pytest.fixture(scope="module")
def baseline_run(tiny, bench):
    """One configuration, the reference and AR comparisons, two rounds each: report, stderr, plot."""
    out = tiny / "run.json"
    status, err = _main(
        bench,
        [
            str(tiny / "ck"),
            *ARGV,
            "--runs",
            "2",
            "--engine",
            "ort",  # ort_seconds: ONNX Runtime's share of the engine time is reported
            "--baselines",
            "reference,ar",
            "--json",
            str(out),
            "--plot",
            str(tiny / "run.png"),
        ],
    )
    assert status == 0, err
    return json.loads(out.read_text()), err, tiny / "run.png"


def test_report_fields_and_equality(baseline_run):
    report, _, _ = baseline_run
    assert report["equality"]["passed"] is True
    checks = [c["check"] for c in report["equality"]["checks"]]
    assert any(c.startswith("fused vs separate commit") for c in checks)
    assert "reference (PyTorch) vs sdar_rt" in checks
    assert {r["config"]["commit"] for r in report["results"]} == {"fused", "separate"}
    comps = {c["kind"]: c for c in report["comparisons"]}
    assert list(comps) == ["reference", "ar"]
    rows = report["results"] + [c[side] for c in comps.values() for side in ("first", "second")]
    for row in rows:
        for key in (
            "tokens_per_second",
            "tokens_per_second_runs",
            "tpf",
            "nfe_per_call",
            "time_to_first_block_ms",
            "block_latency_ms",
            "peak_rss_mib",
            "wall_seconds",
            "tokens",
            "calls",
            "per_run",
        ):
            assert key in row, key
        assert set(row["block_latency_ms"]) >= {"median", "p90", "p99"}
        assert row["tokens"] > 0 and row["tokens_per_second"] > 0
        # the rate shown is the median run's, with the slowest and fastest beside it
        per_run = [r["tokens"] / r["wall_seconds"] for r in row["per_run"]]
        assert row["runs"] == len(per_run) == 2
        assert row["tokens_per_second"] == pytest.approx(statistics.median(per_run))
        s = row["tokens_per_second_runs"]
        assert (s["min"], s["max"]) == (pytest.approx(min(per_run)), pytest.approx(max(per_run)))
    fused = report["results"][0]
    for key in (
        "engine_seconds",
        "host_fraction",
        "ort_seconds",
        "ms_per_decode_forward",
        "prefill_seconds",
        "wall_ms_per_decode_forward",
    ):
        assert fused[key] is not None, key
    assert 0.0 <= fused["host_fraction"] < 1.0
    # the rate after the prompt's prefill: same tokens over the wall time less the prefill phase
    assert 0.0 < fused["prefill_seconds"] < fused["wall_seconds"]
    assert fused["decode_tokens_per_second"] == pytest.approx(
        fused["tokens"] / (fused["wall_seconds"] - fused["prefill_seconds"])
    )
    assert fused["nfe_per_call"]["fused"] > 0 and report["results"][1]["nfe_per_call"]["commit"] > 0
    assert comps["ar"]["second"]["config"]["block_length"] == 1
    assert comps["reference"]["tokens_equal"] is True
    assert report["machine"]["logical_cpus"] >= 1 and "jetson" in report["machine"]
    assert report["settings"]["prompt_token_lengths"]


def test_ratios_are_per_round_medians_and_break_even_is_their_quotient(baseline_run):
    """The comparison's ratio is the median over rounds of (sdar_rt tok/s / peer tok/s in that round);
    break-even TPF = sdar_rt's ms per decode forward / the AR peer's ms per token, so that sdar_rt's
    decode rate over the peer's equals measured TPF / break-even TPF."""
    report, _, _ = baseline_run
    for c in report["comparisons"]:
        a, b = c["first"], c["second"]
        rounds = [
            x["tokens_per_second"] / y["tokens_per_second"]
            for x, y in zip(a["per_run"], b["per_run"], strict=True)
        ]
        assert c["ratio_runs"]["values"] == pytest.approx(rounds)
        assert c["ratio"] == pytest.approx(statistics.median(rounds))
    ar = next(c for c in report["comparisons"] if c["kind"] == "ar")
    a, b = ar["first"], ar["second"]
    assert ar["break_even_tpf"] == pytest.approx(
        a["wall_ms_per_decode_forward"] / b["ms_per_token_after_prefill"]
    )
    assert a["decode_tokens_per_second"] / b["decode_tokens_per_second"] == pytest.approx(
        ar["tpf"] / ar["break_even_tpf"]
    )
    # the AR peer generated, per prompt, at most what sdar_rt did (matched output lengths)
    assert b["tokens"] <= a["tokens"]


def test_break_even_tpf_arithmetic():
    from sdar_rt.bench.compare import break_even_tpf

    # 73.5 ms per 4-token decode forward against 29.2 ms per AR token: a tie at 2.52 tokens per forward
    assert break_even_tpf(
        {"wall_ms_per_decode_forward": 73.5}, {"ms_per_token_after_prefill": 29.2}
    ) == pytest.approx(73.5 / 29.2)
    assert break_even_tpf({"wall_ms_per_decode_forward": 73.5}, {}) is None


def test_report_speaks_to_users(baseline_run):
    """No project-internal labels or goal judgements; spreads shown; progress numbered consistently."""
    report, err, _ = baseline_run
    text = err + json.dumps(report)
    for word in ("issue", "target", " met", "missed", "NOT met", "#6"):
        assert word not in text.replace('"target": {', "").replace("primary_artifact", ""), word
    assert "median of 2 runs" in err and "median of 2 rounds" in err
    steps = [(int(k), int(n)) for k, n in re.findall(r"^\[(\d+)/(\d+)\] ", err, flags=re.M)]
    assert [k for k, _ in steps] == list(range(1, len(steps) + 1)) and {n for _, n in steps} == {len(steps)}
    assert len(steps) == 3  # one configuration, two comparisons
    assert report["target"]["name"] == "checkpoint ck (2 layers, hidden 128)"  # a name, not a path


def test_large_spread_warning_threshold():
    """Judged on the percentage shown (rounded once): 18% warns, 5% and exactly 10% do not, one run
    has no spread to judge."""
    from sdar_rt.bench.spread import LARGE_SPREAD_PCT, large_spread_warning, spread

    assert LARGE_SPREAD_PCT == 10
    wide = spread([10.0, 12.0])
    assert wide["relative_pct"] == 18
    assert "varied from 10.00 to 12.00" in large_spread_warning("the ratio", wide)
    assert large_spread_warning("the ratio", spread([10.0, 10.5])) is None
    assert (
        spread([100.0, 110.0])["relative_pct"] == 10
        and large_spread_warning("x", spread([100.0, 110.0])) is None
    )
    assert spread([3.0])["relative_pct"] is None and large_spread_warning("x", spread([3.0])) is None


def _synthetic_report(ratio_values, rate_values=(100.0, 101.0)):
    from sdar_rt.bench.spread import spread

    rates = spread(list(rate_values))
    row = {
        "config": {
            "block_length": 4,
            "steps": 2,
            "threshold": 0.9,
            "batch": 1,
            "prompt_length": None,
            "commit": "fused",
        },
        "tokens_per_second_runs": rates,
        "load_average_1m": [0.1, 0.2],
    }
    comp = {"title": "sdar_rt vs onnxruntime-genai", "ratio_runs": spread(list(ratio_values))}
    return {
        "settings": {"runs": len(rate_values)},
        "results": [row],
        "comparisons": [comp],
        "machine": {"logical_cpus": 2, "cpu_affinity": 2},
    }


def test_warnings_on_a_wide_spread_not_on_a_tight_one():
    from sdar_rt.bench.summary import warnings

    wide = warnings(_synthetic_report([0.70, 0.81, 0.90]))
    assert len(wide) == 1 and wide[0].startswith(
        "sdar_rt vs onnxruntime-genai: the ratio varied from 0.70 to 0.90"
    )
    assert "25% of the median 0.81" in wide[0]
    assert warnings(_synthetic_report([0.80, 0.81, 0.83])) == []
    noisy_rows = warnings(_synthetic_report([0.80, 0.81], rate_values=(755.0, 1795.0)))
    assert len(noisy_rows) == 1 and "tok/s varied from 755.0 to 1795.0" in noisy_rows[0]


def test_plot_single_configuration_is_a_bar_chart(baseline_run):
    report, err, png = baseline_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and report["plot"] == str(png)
    from sdar_rt.bench import plot

    fig = plot.figure(report)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_xticklabels()]
    # fused and separate commit, then each comparison's two sides, whiskers from the runs
    assert labels[:2] == ["sdar_rt\nfused commit", "sdar_rt\nseparate commit"]
    assert [lbl.split("\n")[0] for lbl in labels[2:]] == ["sdar_rt", "reference", "sdar_rt", "ar"]
    heights = [p.get_height() for p in ax.patches]
    assert heights[0] == pytest.approx(report["results"][0]["tokens_per_second"])
    assert (
        fig.texts[0].get_text() == f"sdar-bench: {report['target']['name']}"
        and "/" not in report["target"]["name"]
    )


def test_plot_sweep_ticks_are_the_measured_values(tiny, bench):
    out = tiny / "sweep.json"
    status, err = _main(
        bench, [str(tiny / "ck"), *ARGV, "--runs", "1", "--threshold", "0.9", "0.5", "--json", str(out)]
    )
    assert status == 0, err
    assert (tiny / "sweep.png").read_bytes()[:4] == b"\x89PNG"  # default: next to --json
    from sdar_rt.bench import plot

    report = json.loads(out.read_text())
    fig = plot.figure(report)
    for ax in fig.axes:
        assert list(ax.get_xticks()) == [0.5, 0.9]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "0.9"]
    assert "one run per measurement" in " ".join(report["warnings"])


def test_plot_ticks_for_block_lengths():
    """A block-length sweep is ticked at 4, 8, 16 only (never 4.5, 6, ...)."""
    from sdar_rt.bench import plot
    from sdar_rt.bench.spread import spread

    def row(L, tps):
        return {
            "config": {
                "block_length": L,
                "steps": L,
                "threshold": 0.9,
                "remasking": "sequential",
                "batch": 1,
                "prompt_length": None,
                "commit": "fused",
            },
            "tokens_per_second": tps,
            "tokens_per_second_runs": spread([tps * 0.9, tps, tps * 1.1]),
            "block_latency_ms": {"median": 1.0},
        }

    report = {
        "target": {"name": "x"},
        "results": [row(4, 10.0), row(8, 12.0), row(16, 11.0)],
        "comparisons": [],
    }
    assert plot.measured_ticks([16, 4, 8, 4]) == [4, 8, 16]
    fig = plot.figure(report)
    assert len(fig.axes) == 2
    assert [list(ax.get_xticks()) for ax in fig.axes] == [[4, 8, 16], [4, 8, 16]]


def test_no_matplotlib_says_why_in_one_line(tiny, bench, monkeypatch):
    from sdar_rt.bench import plot

    monkeypatch.setattr(
        plot, "missing_reason", lambda: 'matplotlib is not installed (pip install "sdar_rt[bench]")'
    )
    status, err = _main(
        bench,
        [
            str(tiny / "ck"),
            *ARGV,
            "--runs",
            "1",
            "--json",
            str(tiny / "noplot.json"),
            "--plot",
            str(tiny / "noplot.png"),
        ],
    )
    assert status == 0
    assert 'sdar-bench: no plot written: matplotlib is not installed (pip install "sdar_rt[bench]")' in err
    assert not (tiny / "noplot.png").exists()


def test_mismatched_reference_is_detected(tiny, bench, tmp_path, monkeypatch):
    from sdar_rt.bench import reference

    real = reference.ReferenceDecoder.generate

    def wrong(self, prompt, **kw):
        r = real(self, prompt, **kw)
        r["token_ids"] = [(r["token_ids"][0] + 1) % 7] + r["token_ids"][1:] if r["token_ids"] else [1]
        return r

    monkeypatch.setattr(reference.ReferenceDecoder, "generate", wrong)
    out = tmp_path / "bad.json"
    status, err = _main(
        bench, [str(tiny / "ck"), *ARGV, "--runs", "1", "--baselines", "reference", "--json", str(out)]
    )
    assert status == 3 and "MISMATCH" in err
    report = json.loads(out.read_text())
    assert report["equality"]["passed"] is False
    assert "reference" in report["error"]
    assert report["results"] == [] and report["comparisons"] == []  # no speed without equal tokens


def test_int4_comparison(tiny, bench, tmp_path):
    """--int4: the same checkpoint exported with 4-bit weights (8-bit LM head) against the float
    weights in alternating rounds: rates, ratio, token agreement and TPF for each."""
    out = tmp_path / "int4.json"
    status, err = _main(
        bench,
        [
            str(tiny / "ck"),
            *ARGV,
            "--runs",
            "1",
            "--json",
            str(out),
            "--int4",
            "--group-size",
            "32",
            "--lm-head-bits",
            "8",
        ],
    )
    assert status == 0, err
    report = json.loads(out.read_text())
    (c,) = report["comparisons"]
    assert c["kind"] == "int4"
    q, flt = c["first"], c["second"]
    assert q["config"]["commit"] == "fused" and q["config"]["batch"] == 1
    assert flt["weights"] == "float32" and q["weights"] == "int4 g32, LM head int8"
    manifest = json.loads((Path(q["artifact"]) / "manifest.json").read_text())
    assert manifest["quantization"]["lm_head"] == "int8" and "int4-g32-head8" in q["artifact"]
    assert c["ratio"] == pytest.approx(q["tokens_per_second"] / flt["tokens_per_second"])  # one round
    g = c["agreement"]
    assert g["rows"] == q["calls"] and g["tokens_compared"] >= q["tokens"]
    assert 0.0 <= g["token_agreement"] <= 1.0 and 0 <= g["rows_equal"] <= g["rows"]
    assert "break_even_tpf" not in c and "int4 weights vs float weights" in err


def test_ort_genai_int4_builder_options_follow_the_artifact():
    """onnxruntime-genai's int4 model is built with the sdar_rt artifact's group size, accuracy level,
    symmetry and LM head format."""
    from sdar_rt.bench.ortgenai import builder_options

    base = {
        "weights": "int4",
        "format": "MatMulNBits",
        "group_size": 128,
        "symmetric": True,
        "accuracy_level": 4,
        "embeddings": "float32",
    }
    assert builder_options(None) == ("fp32", [])
    common = ["block_size=128", "accuracy_level=4", "is_symmetric=true"]
    assert builder_options({**base, "lm_head": "float32"}) == (
        "int4",
        [*common, "nodes_to_exclude=/lm_head/MatMul"],
    )
    assert builder_options({**base, "lm_head": "int8"}) == (
        "int4",
        [*common, "matmul_mixed_precision=last_matmul:int8", "shared_embeddings=false"],
    )
    # float embeddings stay float even when the checkpoint ties them to the quantized head
    assert builder_options({**base, "lm_head": "int4"}) == ("int4", [*common, "shared_embeddings=false"])
    assert builder_options({**base, "lm_head": "int4", "embeddings": "int4"}) == (
        "int4",
        [*common, "op_types_to_quantize=MatMul/Gather"],
    )
    with pytest.raises(ValueError, match="group sizes"):
        builder_options({**base, "lm_head": "int4", "group_size": 512})
    with pytest.raises(ValueError, match="int8"):
        builder_options({**base, "weights": "int8"})


def test_token_agreement():
    from sdar_rt.bench.weights import token_agreement

    ours = [[[1, 2, 3]], [[4, 5]], [[6, 7, 8, 9]]]
    theirs = [[[1, 2, 3]], [[4, 0]], [[6, 7]]]  # one token differs; a row two tokens shorter
    r = token_agreement(ours, theirs)
    assert (r["tokens_equal"], r["tokens_compared"], r["rows_equal"], r["rows"]) == (6, 9, 1, 3)
    assert r["token_agreement"] == pytest.approx(6 / 9) and r["row_agreement"] == pytest.approx(1 / 3)


def test_demo_and_bench_share_one_cached_artifact(tiny, monkeypatch, capsys):
    """sdar-demo's export is the artifact sdar-bench's default configuration uses, and back: the
    second never exports."""
    from sdar_rt import artifact_cache, cli
    from sdar_rt.bench.targets import Targets

    ck = tiny / "ck"
    art = cli.ensure_artifact(ck, None, fp16=False)  # exported now, or by an earlier test's bench run
    assert art.parent == artifact_cache.cache_root() / "artifacts" and (art / "manifest.json").is_file()

    def no_export(*_a, **_k):
        raise AssertionError("exported a second time")

    monkeypatch.setattr(artifact_cache, "export_cached", no_export)
    monkeypatch.setattr("sdar_rt.bench.targets.export_cached", no_export)
    targets = Targets(str(ck), shape=None, model_dir=None, fp16=False, max_context=None)
    assert targets.artifact(targets.default_block_length(), 1) == art
    capsys.readouterr()
    import sdar_export.cli

    monkeypatch.setattr(sdar_export.cli, "export", no_export)
    assert cli.ensure_artifact(ck, None, fp16=False) == art
    assert "reusing the artifact" in capsys.readouterr().err


def test_fresh_cache_demo_exports_once_then_bench_reuses(tmp_path, monkeypatch, tiny):
    """In an empty cache: sdar-demo's export, then sdar-bench's lookup finds that same directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    from sdar_rt import cli
    from sdar_rt.bench.targets import Targets

    targets = Targets(str(tiny / "ck"), shape=None, model_dir=None, fp16=False, max_context=None)
    from sdar_rt.artifact_cache import ExportOptions, artifact_path, cached

    assert cached(tiny / "ck", ExportOptions(), print) is None
    art = cli.ensure_artifact(tiny / "ck", None, fp16=False)
    assert art == artifact_path(tiny / "ck", ExportOptions())
    assert cached(tiny / "ck", ExportOptions(block_length=targets.default_block_length()), print) == art


@pytest.mark.parametrize(
    "files, words",
    [
        (["decode.onnx", "config.json"], ["no manifest.json", "export the checkpoint again"]),
        ([], ["no manifest.json", "no config.json"]),
        (["config.json"], ["no manifest.json", "no *.safetensors"]),
    ],
)
def test_directory_without_manifest_names_it(tmp_path, files, words):
    from sdar_rt import bench

    d = tmp_path / "not-an-artifact"
    d.mkdir()
    for f in files:
        (d / f).write_text("{}")
    status, err = _main(bench, [str(d)])
    assert status == 2
    assert "no weights found" not in err
    for w in words:
        assert w in err, (w, err)


def test_int4_options_need_int4(bench, tiny):
    status, err = _main(bench, [str(tiny / "ck"), "--lm-head-bits", "8"])
    assert status == 2 and "add --int4" in err


def test_cpu_kernels_option(bench, tiny, tmp_path):
    """--cpu-kernels runs the CPU engine with that kernel table (recorded in the settings and in every
    sdar_rt row; the default is the best this CPU runs); a table this CPU lacks, or another engine,
    is refused."""
    from sdar_rt import _core

    out = tmp_path / "k.json"
    status, err = _main(bench, [str(tiny / "ck"), *ARGV, "--runs", "1", "--cpu-kernels", "scalar",
                                "--json", str(out)])
    assert status == 0, err
    report = json.loads(out.read_text())
    assert report["settings"]["cpu_kernels"] == "scalar"
    assert {r["cpu_kernels"] for r in report["results"]} == {"scalar"}
    status, err = _main(bench, [str(tiny / "ck"), *ARGV, "--runs", "1", "--json", str(tmp_path / "d.json")])
    assert status == 0, err
    default = json.loads((tmp_path / "d.json").read_text())
    assert {r["cpu_kernels"] for r in default["results"]} == {_core.cpu_kernels_available()[0]}
    # AMX prefill only with the table that has it, where the CPU and OS allow it.
    assert {r["cpu_amx"] for r in report["results"]} == {False}
    best_has_amx = _core.cpu_amx_usable() and _core.cpu_kernels_available()[0] == "avx512vnni"
    assert {r["cpu_amx"] for r in default["results"]} == {best_has_amx}
    status, err = _main(bench, [str(tiny / "ck"), "--cpu-kernels", "sse9"])
    assert status == 2 and "--cpu-kernels 'sse9'" in err and "scalar" in err
    status, err = _main(bench, [str(tiny / "ck"), "--cpu-kernels", "scalar", "--engine", "ort"])
    assert status == 2 and "--engine cpu" in err


def test_unknown_baseline_is_an_error(bench, tiny):
    status, err = _main(bench, [str(tiny / "ck"), "--baselines", "nope"])
    assert status == 2 and "unknown baseline" in err


def test_entry_points_and_no_torch_import():
    """``sdar-bench`` resolves to sdar_rt.bench.cli:main, ``python -m sdar_rt.bench`` runs, and the
    benchmark modules import no torch (only the reference baseline needs it, when run)."""
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="console_scripts") if e.name == "sdar-bench"]
    from sdar_rt import console

    assert ep.load() is console.bench  # sdar_rt.bench.cli:main, through sdar_rt.extras.run_command
    code = "import sys; sys.argv = ['sdar-bench', '--help']; from sdar_rt.console import bench; bench()"
    usage = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert usage.startswith("usage: sdar-bench")
    code = (
        "import sys, sdar_rt.bench, sdar_rt.bench.run, sdar_rt.bench.timing, sdar_rt.bench.tables, "
        "sdar_rt.bench.plot, sdar_rt.bench.targets, sdar_rt.bench.ortgenai, sdar_rt.bench.reference, "
        "sdar_rt.bench.comparisons, sdar_rt.bench.overhead; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    helptext = subprocess.run(
        [sys.executable, "-m", "sdar_rt.bench", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "break-even TPF" in helptext and "usage: sdar-bench" in helptext


def test_ar_mode_vs_ort_genai_is_planned_with_both_baselines():
    """With both AR peers asked for, sdar_rt's AR mode is also compared with onnxruntime-genai directly,
    last; not otherwise."""
    from sdar_rt.bench.comparisons import planned

    with_int4 = ["int4", "ar", "ort-genai", "ort-genai-int4", "ar-ort-genai"]
    assert planned(["ar", "ort-genai"], True) == with_int4
    assert planned(["llama.cpp"], True) == ["int4", "llama.cpp", "llama.cpp-int4"]
    every = ["ort-genai", "reference", "ar"]
    assert planned(every, False) == [*every, "ar-ort-genai"]
    assert planned(["reference", "ar"], False) == ["reference", "ar"]
    assert planned(["ort-genai"], True) == ["int4", "ort-genai", "ort-genai-int4"]


def test_ar_mode_vs_ort_genai_summary_reads_as_a_cost_ratio():
    """For two AR decoders the quotient of costs is what the line says, not a break-even TPF."""
    from sdar_rt.bench.summary import comparison_line

    runs = {"values": [1.0, 1.2], "min": 1.0, "median": 1.1, "max": 1.2, "relative_pct": 18}
    c = {
        "kind": "ar-ort-genai",
        "title": "sdar_rt's AR mode vs onnxruntime-genai",
        "ratio": 0.93,
        "ratio_runs": runs,
        "tpf": 1.0,
        "break_even_tpf": 80.27 / 74.72,
        "first": {"system": "ar", "tokens_per_second": 12.5, "wall_ms_per_decode_forward": 80.27},
        "second": {"system": "ort-genai", "tokens_per_second": 13.4, "ms_per_token_after_prefill": 74.72},
    }
    line = comparison_line(c)
    said = "its cost per token 1.07x the peer's = 80.27 ms per AR-mode token / 74.72 ms per ort-genai token"
    assert said in line
    assert "break-even" not in line
    c["kind"] = "ar"
    assert "break-even TPF 1.07" in comparison_line(c)


def test_ar_mode_vs_ort_genai_comparison(tiny, bench, tmp_path):
    """--baselines ar,ort-genai: the AR mode against onnxruntime-genai in alternating rounds, the peer
    generating as many tokens as the AR mode did; without onnxruntime-genai both of its comparisons
    are reported as skipped, with the reason."""
    from sdar_rt.bench import ortgenai

    out = tmp_path / "ar-oga.json"
    status, err = _main(
        bench, [str(tiny / "ck"), *ARGV, "--runs", "1", "--baselines", "ar,ort-genai", "--json", str(out)]
    )
    assert status == 0, err
    comps = {c["kind"]: c for c in json.loads(out.read_text())["comparisons"]}
    assert list(comps) == ["ar", "ort-genai", "ar-ort-genai"]
    assert "skipped" not in comps["ar"]
    reason = ortgenai.missing_reason()
    c = comps["ar-ort-genai"]
    if reason:
        assert comps["ort-genai"]["skipped"] == reason and c["skipped"] == reason
        assert f"sdar_rt's AR mode vs onnxruntime-genai: skipped ({reason})" in err
        return
    a, b = c["first"], c["second"]
    assert (a["system"], b["system"]) == ("ar", "ort-genai")
    assert a["config"]["block_length"] == 1 and b["weights"] == "float32"
    cost = a["wall_ms_per_decode_forward"] / b["ms_per_token_after_prefill"]
    assert c["break_even_tpf"] == pytest.approx(cost)
    assert b["tokens"] <= a["tokens"]
    assert "its cost per token" in err


def test_runs_last_long_enough_and_json_only_when_asked(bench, tiny, capsys):
    """By default a run repeats the prompt set until it lasts --min-run-seconds (the tiny model's pass
    takes milliseconds, so several times), every call of a run is timed, and nothing but the tables
    (stderr) is printed unless --json asks; ``--json -`` prints the report on stdout."""
    argv = [str(tiny / "ck"), *ARGV[:-2], "--runs", "2"]
    capsys.readouterr()
    assert bench.main([*argv, "--min-run-seconds", "0.3"]) == 0
    out = capsys.readouterr()
    assert out.out == "" and "tok/s" in out.err
    assert bench.main([*argv, "--min-run-seconds", "0.3", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["min_run_seconds"] == 0.3
    n_prompts = len(report["settings"]["prompts"])
    for row in report["results"]:
        repeats = row["prompt_set_passes_per_run"]
        assert repeats >= 2  # a pass over four prompts of the tiny model takes far less than 0.3 s
        assert row["calls"] == 2 * repeats * n_prompts
    assert bench.main([*argv, "--min-run-seconds", "0", "--json", "-"]) == 0
    once = json.loads(capsys.readouterr().out)
    assert {r["prompt_set_passes_per_run"] for r in once["results"]} == {1}
    assert once["results"][0]["calls"] == 2 * n_prompts
    status, err = _main(bench, [*argv, "--min-run-seconds", "-1"])
    assert status == 2 and "--min-run-seconds" in err


def test_an_artifact_runs_its_checkpoints_prompt_set(tmp_path):
    """The exporter copies the checkpoint's bench_prompts.txt into the artifact, and sdar-bench reads
    it from there when benchmarking the artifact alone (no checkpoint dir given)."""
    from types import SimpleNamespace

    from sdar_export.manifest import copy_checkpoint_files
    from sdar_rt.bench.prompts import DEFAULT_PROMPTS, prompt_texts
    from sdar_rt.cli import PACKAGED_CHECKPOINT

    art = tmp_path / "art"
    art.mkdir()
    copy_checkpoint_files(PACKAGED_CHECKPOINT, art)
    gen = SimpleNamespace(artifact=SimpleNamespace(path=art))
    from_checkpoint = prompt_texts(SimpleNamespace(artifact=SimpleNamespace(path=tmp_path)), None,
                                   PACKAGED_CHECKPOINT)
    assert prompt_texts(gen, None, None) == from_checkpoint
    assert from_checkpoint != list(DEFAULT_PROMPTS)
    (art / "bench_prompts.txt").unlink()
    assert prompt_texts(gen, None, None) == list(DEFAULT_PROMPTS)


def test_engine_and_threads_options_describe_every_engine():
    from sdar_rt.bench.cli import parser

    p = parser()
    (engine,) = [x for x in p._actions if x.dest == "engine"]
    assert engine.choices == ["auto", "cpu", "ort", "trt"]
    (threads,) = [x for x in p._actions if x.dest == "threads"]
    assert "CPU engine" in threads.help and "ONNX Runtime" in threads.help and "llama.cpp" in threads.help
    assert p.parse_args(["--engine", "cpu"]).engine == "cpu"


def test_markdown_table_has_one_row_per_comparison(baseline_run, tmp_path):
    """--markdown's table: the command that made it, the machine, and per comparison its ratio and
    break-even TPF as the report has them."""
    from sdar_rt.bench.markdown import COLUMNS, render

    report, _, _ = baseline_run
    text = render(report)
    assert text.startswith("`sdar-bench " + " ".join(report["argv"][:2]))
    assert report["machine"]["cpu"] in text and report["time"] in text
    rows = [line for line in text.splitlines() if line.startswith("| sdar_rt vs")]
    assert len(rows) == len(report["comparisons"])
    for row, c in zip(rows, report["comparisons"], strict=True):
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert len(cells) == len(COLUMNS) and cells[0] == c["title"]
        assert cells[5].startswith(f"{c['ratio']:.2f} (")
        be = c.get("break_even_tpf")
        assert cells[9] == ("-" if be is None else f"{be:.2f}")
