"""Where one forward of the ONNX Runtime step graph goes, by operator type (ONNX Runtime's profiler).

    python -m sdar_export.profile_step ARTIFACT [ARTIFACT ...] [--tokens 4 8] [--past 32] [--threads 2]
                                       [--runs 10] [--ort-genai MODEL_DIR ...] [--json OUT]

For each artifact's ``step.onnx`` (or a ``.onnx`` file given directly), one forward per token count
(``--tokens``: 4 is a decode step at block length 4, 8 a fused commit + decode step) after ``--past``
cached rows, with ``num_logits`` rows of logits (the block length). ``--ort-genai`` adds, per
artifact in the same order, onnxruntime-genai's model of the same weights at one token (its
autoregressive step), run with plain ONNX Runtime on the same inputs. Prints one markdown table per
artifact: per operator type the milliseconds per forward (the sum of its nodes' median kernel
times over ``--runs``) and the nodes that ran, the sum over all kernels, and the forward's median
wall time measured without the profiler.

Needs only onnxruntime (no torch): runs against any exported artifact. The nodes are those ONNX
Runtime runs after its own session-time fusions, so the table shows what the CPU executes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_NP = {1: np.float32, 10: np.float16, 7: np.int64, 6: np.int32, 9: np.bool_}


@dataclass
class Profile:
    """One graph at one token count: per op type, median ms per forward and nodes per forward."""

    label: str
    tokens: int
    ms: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, int] = field(default_factory=dict)
    kernel_ms: float = 0.0          # sum over the nodes of each one's median kernel time
    profiled_ms: float = 0.0        # median model_run duration under the profiler
    forward_ms: float = 0.0         # median wall time of session.run without the profiler

    def to_json(self) -> dict:
        return {"label": self.label, "tokens": self.tokens, "forward_ms": self.forward_ms,
                "kernel_ms": self.kernel_ms, "profiled_ms": self.profiled_ms,
                "ops": {op: {"ms": self.ms[op], "nodes": self.nodes[op]} for op in self.ms}}


def _elem(value_info) -> int:
    return value_info.type.tensor_type.elem_type


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param
            for d in value_info.type.tensor_type.shape.dim]


def step_graph_path(target: Path) -> Path:
    """The step graph of an artifact dir, or ``target`` itself when it is an .onnx file."""
    if target.is_dir():
        path = target / "step.onnx"
        if not path.is_file():
            raise SystemExit(f"{target}: no step.onnx (an artifact exported without the ONNX Runtime step "
                             "graph?); re-export it with sdar-export, or pass an .onnx file")
        return path
    if target.suffix == ".onnx" and target.is_file():
        return target
    raise SystemExit(f"{target}: not an artifact dir or an .onnx file")


def genai_decoder(model_dir: Path) -> tuple[Path, dict]:
    """The decoder graph of an onnxruntime-genai model dir and its genai_config.json section."""
    cfg = model_dir / "genai_config.json"
    if not cfg.is_file():
        raise SystemExit(f"{model_dir}: no genai_config.json; build the model with "
                         "`python -m onnxruntime_genai.models.builder` first")
    decoder = json.loads(cfg.read_text())["model"]["decoder"]
    return model_dir / decoder["filename"], decoder


def _default_num_logits(path: Path) -> int:
    manifest = path.parent / "manifest.json"
    if manifest.is_file():
        return int(json.loads(manifest.read_text())["block_length"])
    return 4


def step_feeds(graph, tokens: int, past: int, num_logits: int, seed: int = 0) -> dict:
    """Inputs of an sdar_rt step graph: random ids, ``past`` zero cache rows, past_len = past."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in graph.input:
        dims = _dims(vi)
        if vi.name == "input_ids":
            feeds[vi.name] = rng.integers(0, 256, (dims[0], tokens), dtype=np.int64)
        elif vi.name == "past_len":
            feeds[vi.name] = np.array([past], np.int64)
        elif vi.name == "num_logits":
            feeds[vi.name] = np.array([num_logits], np.int64)
        else:      # past_key_i / past_value_i [P, B, KVH, D]
            feeds[vi.name] = np.zeros((past, *dims[1:]), _NP[_elem(vi)])
    return feeds


def genai_feeds(graph, decoder: dict, tokens: int, past: int, seed: int = 0) -> dict:
    """Inputs of an onnxruntime-genai decoder graph: ids, attention mask, position ids if it has
    them, ``past`` zero cache rows [B, KVH, P, D] (``decoder``: its genai_config.json section)."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in graph.input:
        dims, dt = _dims(vi), _NP[_elem(vi)]
        batch = dims[0] if isinstance(dims[0], int) else 1
        if vi.name == "input_ids":
            feeds[vi.name] = rng.integers(0, 256, (batch, tokens), dtype=dt)
        elif vi.name == "attention_mask":
            feeds[vi.name] = np.ones((batch, past + tokens), dt)
        elif vi.name == "position_ids":
            feeds[vi.name] = np.arange(past, past + tokens, dtype=dt).reshape(1, tokens).repeat(batch, 0)
        elif vi.name.startswith("past_key_values"):
            feeds[vi.name] = np.zeros((batch, decoder["num_key_value_heads"], past, decoder["head_size"]), dt)
        else:
            raise SystemExit(f"unexpected onnxruntime-genai graph input {vi.name!r}")
    return feeds


def _options(threads: int, profile_dir: str | None):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    if profile_dir is not None:
        o.enable_profiling = True
        o.profile_file_prefix = str(Path(profile_dir) / "profile")
    return o


def _median_forward_ms(session, feeds: dict, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def parse_profile(events: list[dict], skip_runs: int) -> tuple[dict, dict, float, float]:
    """(ms per op type, nodes per op type, kernel ms, median model_run ms) of an ONNX Runtime
    profile, over the runs after the first ``skip_runs``.

    Each node's time is its median over the runs, and an op type's time the sum of its nodes'
    medians: on a shared host a thread preempted inside one kernel inflates that run's sum, not
    the median of the node. Kernel ms is the sum over all nodes."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")[skip_runs:]
    if not runs:
        raise ValueError("the profile holds no measured model_run")
    starts = [r[0] for r in runs]
    durations: dict[str, list[float]] = defaultdict(list)
    op_of: dict[str, str] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        i = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if i < 0 or e["ts"] > runs[i][1]:
            continue
        durations[e["name"]].append(e["dur"] / 1e3)
        op_of[e["name"]] = e.get("args", {}).get("op_name", "?")
    ms: dict[str, float] = defaultdict(float)
    nodes: dict[str, int] = defaultdict(int)
    for name, d in durations.items():
        ms[op_of[name]] += statistics.median(d)
        nodes[op_of[name]] += 1
    wall = statistics.median((b - a) / 1e3 for a, b in runs)
    return dict(ms), dict(nodes), sum(ms.values()), wall


def profile_graph(path: Path, label: str, feeds: dict, threads: int, runs: int, warmup: int = 2) -> Profile:
    """Times ``runs`` forwards without the profiler, then ``runs`` under it (separate sessions)."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    tokens = int(feeds["input_ids"].shape[1])
    s = ort.InferenceSession(str(path), sess_options=_options(threads, None), providers=providers)
    forward = _median_forward_ms(s, feeds, runs, warmup)
    del s
    with tempfile.TemporaryDirectory(prefix="sdar-profile-") as tmp:
        s = ort.InferenceSession(str(path), sess_options=_options(threads, tmp), providers=providers)
        for _ in range(warmup + runs):
            s.run(None, feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
        del s
    ms, nodes, kernel, wall = parse_profile(events, warmup)
    return Profile(label, tokens, ms, nodes, kernel, wall, forward)


def markdown(title: str, profiles: list[Profile]) -> str:
    """One table: operator types as rows (by the largest share first), the profiles as columns."""
    ops = sorted({op for p in profiles for op in p.ms},
                 key=lambda op: -max(p.ms.get(op, 0.0) for p in profiles))
    head = "| op type | " + " | ".join(f"{p.label} T={p.tokens} ms (nodes)" for p in profiles) + " |"
    lines = [f"**{title}**", "", head, "|---|" + "---|" * len(profiles)]
    for op in ops:
        cells = [f"{p.ms[op]:.2f} ({p.nodes[op]})" if op in p.ms else "-" for p in profiles]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    lines.append("| all kernels | " + " | ".join(
        f"{p.kernel_ms:.2f} ({sum(p.nodes.values())})" for p in profiles) + " |")
    lines.append("| forward, no profiler | " + " | ".join(f"{p.forward_ms:.2f}" for p in profiles) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdar_export.profile_step",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+", type=Path, help="artifact dirs (their step.onnx) or .onnx files")
    ap.add_argument("--tokens", type=int, nargs="+", default=[4, 8], help="token counts T (default 4 8)")
    ap.add_argument("--past", type=int, default=32, help="cached rows before the forward (default 32)")
    ap.add_argument("--num-logits", type=int, default=None, help="logits rows (default: the block length)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10, help="measured forwards per graph and token count")
    ap.add_argument("--ort-genai", type=Path, nargs="*", default=[],
                    help="onnxruntime-genai model dirs of the same weights, one per artifact, in order")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.ort_genai and len(a.ort_genai) != len(a.artifacts):
        ap.error(f"--ort-genai takes one model dir per artifact ({len(a.artifacts)}), got {len(a.ort_genai)}")
    if a.runs < 1 or a.threads < 0 or a.past < 0 or any(t < 1 for t in a.tokens):
        ap.error("--runs and --tokens must be positive, --past and --threads non-negative")
    import onnx

    out = []
    for i, target in enumerate(a.artifacts):
        path = step_graph_path(target)
        graph = onnx.load(str(path), load_external_data=False).graph
        nl = _default_num_logits(path) if a.num_logits is None else a.num_logits
        profiles = []
        for t in a.tokens:
            print(f"profiling {path} at T={t} ...", file=sys.stderr)
            feeds = step_feeds(graph, t, a.past, min(nl, t))
            profiles.append(profile_graph(path, "sdar_rt", feeds, a.threads, a.runs))
        if a.ort_genai:
            gpath, decoder = genai_decoder(a.ort_genai[i])
            print(f"profiling {gpath} at T=1 ...", file=sys.stderr)
            feeds = genai_feeds(onnx.load(str(gpath), load_external_data=False).graph, decoder, 1, a.past)
            profiles.append(profile_graph(gpath, "ort-genai", feeds, a.threads, a.runs))
        title = (f"{target} (past {a.past} rows, {a.threads} threads, medians of {a.runs} forwards; "
                 "ms per forward, nodes run)")
        print(markdown(title, profiles) + "\n")
        out.append({"target": str(target), "past": a.past, "threads": a.threads,
                    "profiles": [p.to_json() for p in profiles]})
    if a.json is not None:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
