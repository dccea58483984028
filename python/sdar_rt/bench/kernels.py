"""Small-M matmul micro-benchmark: the native CPU engine's kernels against ONNX Runtime's.

    python -m sdar_rt.bench.kernels [--threads 2] [--matrices 84] [--shape 1024x3072] [--rows 1 2 4 8 16]
                                   [--formats q4] [--repeats 7] [--kernels auto [TABLE ...]] [--json OUT]
    python -m sdar_rt.bench.kernels --artifact ART [ART ...] [--past 32] [--threads 2] [--repeats 7]

Each format multiplies M rows of activations by ``--matrices`` weight matrices of ``--shape`` (K x N:
K inputs, N outputs; 84 of 1024 x 3072 hold 264M weights, the MLP-sized matmuls of Qwen3-0.6B):
  * ``q4``: int4 weights, blocks of ``--block`` (128), symmetric; ours with int8 activations against
    ONNX Runtime's ``com.microsoft.MatMulNBits`` at accuracy level 4 (int8 activations too);
  * ``q8``: int8 weights in the same blocks, against MatMulNBits with 8 bits;
  * ``f32``: float32 weights against ONNX Runtime's MatMul.
ONNX Runtime's side is built with the ``onnx`` package (the export extra). Both sides run the same
shapes, with random weights (speed does not depend on the values), with the same thread count; the two
are timed alternately so that both see the same load on a shared host, each round starting with the
next side.
Reported per M: median milliseconds over ``--repeats`` rounds, the ratio to M = 1 (the cost of the
extra rows), ours / ONNX Runtime, GMAC/s and the weights' bytes per second, plus a memory-read probe
(the same number of bytes read by the same threads): the floor a weight-streaming kernel cannot
beat. The host's load average is recorded at the start and the end. ``--kernels`` picks our kernel
table (default: the best this CPU runs; e.g. ``avx2`` on an AVX-512 machine to time the other table);
with several (``--kernels avx2 scalar``), each round times every table in turn, the first one is
"ours" above, and each other table is reported by its median ms and its median ratio to the first
table over the rounds (each round's pair ran back to back, under the same load).
With ``--artifact``, a decode (T = L) and a fused (T = 2L) forward of both engines, alternately, and the
CPU engine's split of its forward by phase (each matmul by weight, attention, the rest); with several
``--kernels``, a CPU engine per table in the same rounds, each other table against the first as above.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

from .. import _core

FORMATS = ("q4", "q8", "f32")


def _log(msg: str) -> None:
    print(f"sdar_rt.bench.kernels: {msg}", file=sys.stderr, flush=True)


def _ours(fmt: str, n: int, k: int, block: int, rng) -> tuple[_core.CpuMatrix, int]:
    """A random matrix in the CPU engine's layout, and its bytes."""
    rows = (n + 7) // 8 * 8
    if fmt == "f32":
        data = rng.standard_normal((rows, k), dtype=np.float32)
        return _core.CpuMatrix("f32", n, k, data), data.nbytes
    per_row = k // 2 if fmt == "q4" else k
    data = rng.integers(0, 256, (rows, per_row), dtype=np.uint8)
    scales = (rng.random((rows // 8, k // block, 8), dtype=np.float32) * 0.01).astype(np.float32)
    return _core.CpuMatrix(fmt, n, k, data, scales, None, block, True), data.nbytes + scales.nbytes


def _ort_session(fmt: str, count: int, n: int, k: int, block: int, threads: int, rng):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    for i in range(count):
        if fmt == "f32":
            inits.append(numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), f"w{i}"))
            nodes.append(helper.make_node("MatMul", ["x", f"w{i}"], [f"y{i}"]))
            continue
        bits = 4 if fmt == "q4" else 8
        blob = rng.integers(0, 256, (n, k // block, block * bits // 8), dtype=np.uint8)
        scales = (rng.random(n * (k // block), dtype=np.float32) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(blob, f"b{i}"), numpy_helper.from_array(scales, f"s{i}")]
        nodes.append(helper.make_node("MatMulNBits", ["x", f"b{i}", f"s{i}"], [f"y{i}"],
                                      domain="com.microsoft", K=k, N=n, bits=bits, block_size=block,
                                      accuracy_level=4))
    graph = helper.make_graph(
        nodes, "bench", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["M", n]) for i in range(count)], inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


# Idle time before each timed call: ONNX Runtime's workers keep spinning for a while after a run
# (as ours do, shorter), and a spinning thread of the other side would take a core from the call.
SETTLE_SECONDS = 0.05


def _rotated(items: list, i: int) -> list:
    """The sides of round i: each round starts one side later, and every other cycle of rounds runs them
    in reverse, so over 2 x len(items) rounds each side is first as often as any other and runs before
    each other side as often as after it. On a loaded host the first call after a pause measured up to
    1.5x slower, and with rotation alone the side listed second still came out 10-20% faster."""
    n = len(items)
    order = items if (i // n) % 2 == 0 else items[::-1]
    k = i % n
    return order[k:] + order[:k]


def _timed(fn) -> float:
    time.sleep(SETTLE_SECONDS)
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_format(fmt: str, args, rng) -> dict:
    k, n = args.k, args.n
    _log(f"{fmt}: building {args.matrices} matrices of {k} x {n} for both sides")
    ours, nbytes = zip(*(_ours(fmt, n, k, args.block, rng) for _ in range(args.matrices)), strict=True)
    ours = list(ours)
    weight_bytes = sum(nbytes)
    runners = [_core.CpuMatmul(threads=args.threads, kernels=name) for name in args.kernels]
    runner = runners[0]
    sess = _ort_session(fmt, args.matrices, n, k, args.block, args.threads, rng)
    probe = np.ones(weight_bytes // 8, dtype=np.uint64)
    rows_out = []
    macs = args.matrices * n * k
    for m in args.rows:
        x = rng.standard_normal((m, k), dtype=np.float32)
        for r in runners:
            r.run_all(ours, x)                  # warm up: workspace, caches, thread wake-up
        sess.run(None, {"x": x})
        t_tables: list[list[float]] = [[] for _ in runners]
        t_ort = []
        sides = [(lambda x=x, r=r: r.run_all(ours, x), times)
                 for r, times in zip(runners, t_tables, strict=True)]
        sides.append((lambda x=x: sess.run(None, {"x": x}), t_ort))
        for i in range(args.repeats):
            for fn, times in _rotated(sides, i):
                times.append(_timed(fn))
        t_ours = t_tables[0]
        row = {"rows": m, "ours_ms": 1e3 * statistics.median(t_ours),
               "ort_ms": 1e3 * statistics.median(t_ort)}
        if len(runners) > 1:
            row["tables"] = _table_ratios(runners, t_tables)
        row["ours_over_ort"] = row["ours_ms"] / row["ort_ms"]
        row["ours_gmac_per_s"] = macs * m / row["ours_ms"] / 1e6
        row["ort_gmac_per_s"] = macs * m / row["ort_ms"] / 1e6
        row["ours_weight_gb_per_s"] = weight_bytes / row["ours_ms"] / 1e6
        rows_out.append(row)
        _log(f"{fmt} M={m}: ours {row['ours_ms']:.2f} ms, ONNX Runtime {row['ort_ms']:.2f} ms")
    base_ours, base_ort = rows_out[0]["ours_ms"], rows_out[0]["ort_ms"]
    for row in rows_out:
        row["ours_vs_first_rows"] = row["ours_ms"] / base_ours
        row["ort_vs_first_rows"] = row["ort_ms"] / base_ort
    read = statistics.median(runner.read_seconds(probe) for _ in range(args.repeats))
    return {"format": fmt, "matrices": args.matrices, "k": k, "n": n,
            "block": args.block if fmt != "f32" else None, "weight_bytes": weight_bytes,
            "kernels": runner.kernels, "rows": rows_out,
            "memory_read_ms": 1e3 * read, "memory_read_gb_per_s": weight_bytes / read / 1e9}


def _table_ratios(engines, times: list[list[float]]) -> dict[str, dict[str, float]]:
    """Per kernel table after the first: median ms, and the median over rounds of its time / the first's."""
    first = times[0]
    return {e.kernels: {"ms": 1e3 * statistics.median(t),
                        "vs_first_table": statistics.median(a / b for a, b in zip(t, first, strict=True))}
            for e, t in zip(engines[1:], times[1:], strict=True)}


def bench_forward(path: str, args) -> dict:
    """Median ms per forward of both engines on one artifact (see the module docstring)."""
    from ..artifact import load_artifact
    from ..cpu_engine import make_cpu_engine
    from ..generator import Generator

    artifact = load_artifact(path)
    cpus = [make_cpu_engine(artifact, threads=args.threads, kernels=name) for name in args.kernels]
    cpu = cpus[0]
    gens = {"cpu": Generator(path, engine=cpu),
            **{f"cpu:{i}": Generator(path, engine=e) for i, e in enumerate(cpus[1:], 1)},
            "ort": Generator(path, engine="ort", threads=args.threads)}
    L = gens["cpu"].spec.block_length
    past = args.past // L * L
    steps = [(_core.GraphKind.Decode, L), (_core.GraphKind.Fused, 2 * L)]
    rows = []
    for kind, tokens in steps:
        if past + tokens > gens["cpu"].spec.max_context:
            continue
        times: dict[str, list[float]] = {name: [] for name in gens}
        for g in gens.values():
            g.engine.run(kind, past, tokens)         # warm up
        before = cpu.profile()
        for i in range(args.repeats):
            for name, g in _rotated(list(gens.items()), i):
                times[name].append(_timed(lambda g=g, k=kind, t=tokens: g.engine.run(k, past, t)))
        after = cpu.profile()
        row = {"tokens": tokens, "kind": _core.graph_name(kind), "past": past,
               "cpu_ms": 1e3 * statistics.median(times["cpu"]),
               "ort_ms": 1e3 * statistics.median(times["ort"]),
               # the CPU engine's own clock inside run() and its split by phase (means over the timed runs)
               "cpu_mean_ms": 1e3 * (after["seconds"] - before["seconds"]) / args.repeats,
               "cpu_phases_ms": {k: 1e3 * (after[k] - before[k]) / args.repeats
                                 for k in after if k not in ("runs", "seconds")}}
        row["cpu_over_ort"] = row["cpu_ms"] / row["ort_ms"]
        if len(cpus) > 1:
            row["tables"] = _table_ratios(cpus, [times[n] for n in gens if n.startswith("cpu")])
        rows.append(row)
        _log(f"{path}: T={tokens}: CPU engine {row['cpu_ms']:.1f} ms, ONNX Runtime {row['ort_ms']:.1f} ms")
    q = gens["cpu"].artifact.quantization or {}
    return {"artifact": str(path), "block_length": L, "weights": q.get("weights", gens["cpu"].artifact.dtype),
            "lm_head": q.get("lm_head", gens["cpu"].artifact.dtype), "kernels": gens["cpu"].engine.kernels,
            "threads": args.threads, "rows": rows}


def _forward_table(res: dict) -> str:
    lines = [f"{res['artifact']}: {res['weights']} weights, {res['lm_head']} LM head, "
             f"L={res['block_length']}, kernels {res['kernels']}",
             "   T  kind      CPU engine ms  ONNX Runtime ms  CPU/ORT"]
    for r in res["rows"]:
        lines.append(f"{r['tokens']:4d}  {r['kind']:8s} {r['cpu_ms']:14.1f} {r['ort_ms']:16.1f} "
                     f"{r['cpu_over_ort']:8.2f}")
    for r in res["rows"]:
        split = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_phases_ms"].items())
        lines.append(f"  T={r['tokens']}: CPU engine ms by phase (mean): {split}")
    lines += _tables_lines(res, "T", "tokens")
    return "\n".join(lines)


def _tables_lines(res: dict, label: str, key: str) -> list[str]:
    """The other kernel tables' lines: median ms and median paired ratio to the first table."""
    return [f"  {label}={r[key]}: kernels {name} {t['ms']:.2f} ms, {t['vs_first_table']:.3f}x the time of "
            f"{res['kernels']} (median over rounds)"
            for r in res["rows"] for name, t in r.get("tables", {}).items()]


def _table(res: dict) -> str:
    lines = [f"{res['format']}: {res['matrices']} x [{res['k']} x {res['n']}] "
             f"({res['weight_bytes'] / 1e6:.0f} MB), kernels {res['kernels']}; "
             f"reading the same bytes: {res['memory_read_ms']:.1f} ms "
             f"({res['memory_read_gb_per_s']:.1f} GB/s)",
             "   M   ours ms  x M=1   ORT ms  x M=1  ours/ORT  ours GMAC/s  ORT GMAC/s"]
    for r in res["rows"]:
        lines.append(f"{r['rows']:4d} {r['ours_ms']:9.2f} {r['ours_vs_first_rows']:6.2f} {r['ort_ms']:8.2f} "
                     f"{r['ort_vs_first_rows']:6.2f} {r['ours_over_ort']:9.2f} {r['ours_gmac_per_s']:12.1f} "
                     f"{r['ort_gmac_per_s']:11.1f}")
    lines += _tables_lines(res, "M", "rows")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sdar_rt.bench.kernels", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--matrices", type=int, default=84)
    p.add_argument("--shape", default="1024x3072", help="K x N of each matrix (inputs x outputs)")
    p.add_argument("--block", type=int, default=128, help="quantization block (group) size")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--formats", nargs="+", default=["q4"], choices=FORMATS)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kernels", nargs="+", default=["auto"],
                   help="our kernel table: auto (the best this CPU runs) or one of the names this build "
                        "lists in sdar_rt._core.cpu_kernels_available(); several are timed in the same "
                        "rounds, each against the first")
    p.add_argument("--artifact", nargs="+", default=None,
                   help="time whole forwards of these artifacts (CPU engine vs ONNX Runtime) instead")
    p.add_argument("--past", type=int, default=32, help="--artifact: cached positions before the step")
    p.add_argument("--json", default=None, help="write the results here")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        args.k, args.n = (int(v) for v in args.shape.lower().split("x"))
    except ValueError:
        _log(f"--shape must be KxN, e.g. 1024x3072, got {args.shape!r}")
        return 2
    unknown = [t for t in args.kernels if t != "auto" and t not in _core.cpu_kernels_available()]
    if unknown:
        _log(f"--kernels {' '.join(unknown)}: this build and CPU run "
             f"{', '.join(_core.cpu_kernels_available())} (or auto)")
        return 2
    if args.k % args.block or args.block % 32:
        _log(f"--block {args.block} must be a multiple of 32 dividing K = {args.k}")
        return 2
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    rng = np.random.default_rng(args.seed)
    if args.artifact:
        results = [bench_forward(a, args) for a in args.artifact]
        tables = [_forward_table(r) for r in results]
    else:
        results = [bench_format(f, args, rng) for f in args.formats]
        tables = [_table(r) for r in results]
    out = {"threads": args.threads, "repeats": args.repeats, "load_average_start": load,
           "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
           "cpu_kernels": _core.cpu_kernels_available(), "results": results}
    for t in tables:
        print(t)
    print(f"load average (1, 5, 15 min): start {out['load_average_start']}, end {out['load_average_end']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
