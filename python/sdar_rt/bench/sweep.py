"""sdar_rt over every configuration asked for: block length x batch x prompt length x steps x threshold.

Each configuration runs with the fused commit pass and with a separate commit pass; the two must
give the same tokens, and batched rows the batch-1 tokens. The first configuration (batch 1, fused
commit) is the one the comparisons use.
"""

from __future__ import annotations

import gc
import math
import time
from dataclasses import asdict, dataclass

from .checks import Checks
from .generators import sdar_generator
from .progress import Phases, log
from .prompts import prompt_ids, prompt_texts
from .timing import rss_mib, time_sdar


@dataclass(frozen=True)
class Config:
    block_length: int
    steps: int
    threshold: float
    remasking: str
    batch: int
    prompt_length: int | None

    def as_dict(self) -> dict:
        return asdict(self)


def config_label(c: dict) -> str:
    """Compact label: L4 s2 t0.9 b1 p16 fused."""
    parts = [
        f"L{c['block_length']}" if "block_length" in c else "",
        f"s{c['steps']}" if "steps" in c else "",
        f"t{c['threshold']:g}" if c.get("threshold") is not None else "",
        f"b{c['batch']}" if "batch" in c else "",
        f"p{c['prompt_length']}" if c.get("prompt_length") else "",
        c.get("commit") or "",
    ]
    return " ".join(x for x in parts if x)


def plan(a, default_block_length: int) -> tuple[list[tuple[int, int, list[Config]]], list[str]]:
    """Configurations grouped by artifact (block length, batch), and the combinations left out."""
    groups, skipped = [], []
    for L in a.block_lengths or [default_block_length]:
        for B in sorted(set(a.batch) | {1}):
            cfgs = []
            for P in a.prompt_lengths or [None]:
                for steps in a.steps or [None]:
                    if steps is not None and steps > L:
                        skipped.append(f"steps {steps} > block length {L}")
                        continue
                    for thr in a.threshold:
                        cfgs.append(Config(L, steps or L, thr, a.remasking, B, P))
            groups.append((L, B, cfgs))
    return groups, sorted(set(skipped))


def run(a, targets, groups, checks: Checks, report: dict, phases: Phases) -> dict:
    """All sdar_rt configurations; returns the primary (first, batch 1, fused) one's context."""
    b1_outputs: dict = {}
    primary: dict = {}
    for L, B, cfgs in groups:
        gen = None
        for cfg in cfgs:
            with phases.phase(f"sdar_rt {config_label(cfg.as_dict())}: fused and separate commit") as bar:
                if gen is None:
                    gen = sdar_generator(a, targets.artifact(L, B))
                    texts = prompt_texts(gen, a.prompts, targets.model_dir)
                    report["settings"].setdefault("prompts", texts)
                kw = dict(
                    max_new_tokens=a.max_new_tokens,
                    denoising_steps=cfg.steps,
                    remasking=a.remasking,
                    threshold=cfg.threshold,
                )
                prompts, repeats = run_prompts(
                    gen, prompt_ids(gen, texts, cfg.prompt_length), kw, B, a.min_run_seconds
                )
                bar.start(2 * (a.warmup + a.runs * len(prompts)))
                (fused, out_f), (sep, out_s) = (
                    time_sdar(
                        gen,
                        prompts,
                        runs=a.runs,
                        warmup=a.warmup,
                        kwargs={**kw, "fused_commit": commit_fused},
                        num_samples=B,
                        on_call=bar.advance,
                    )
                    for commit_fused in (True, False)
                )
            c = cfg.as_dict()
            checks.equal(f"fused vs separate commit {config_label(c)}", out_f, out_s)
            key = (L, cfg.prompt_length, cfg.steps, cfg.threshold)
            if B == 1:
                b1_outputs[key] = out_f
            else:
                single = [[rows[0]] * B for rows in b1_outputs[key]]
                checks.equal(f"batch {B} rows vs batch 1 {config_label(c)}", out_f, single)
            for row, commit in ((fused, "fused"), (sep, "separate")):
                row.update(
                    prompt_set_passes_per_run=repeats,
                    system="sdar_rt",
                    config={**c, "commit": commit},
                    engine=type(gen.engine).__name__,
                    cpu_kernels=getattr(gen.engine, "kernels", None),  # the CPU engine's table
                    cpu_amx=getattr(gen.engine, "amx", None),  # quantized prefill on AMX tiles
                    device=gen.device,
                    device_memory_in_use_mib=_device_memory_mib(gen),
                )
                report["results"].append(row)
            if not primary:
                primary = {
                    "row": fused,
                    "outputs": out_f,
                    "prompts": prompts,
                    "kwargs": kw,
                    "artifact": gen.artifact,
                    "config": c,
                }
                if a.memory_calls > 0:
                    with phases.phase(f"memory: {a.memory_calls} calls") as bar:
                        bar.start(a.memory_calls)
                        report["memory"] = memory_run(gen, prompts, a.memory_calls, kw, bar.advance)
        del gen
        gc.collect()
    n = len(checks.items)
    log(f"{n} token-equality check{'s' if n != 1 else ''} passed")
    return primary


def run_prompts(
    gen, prompts: list[list[int]], kwargs: dict, num_samples: int, min_seconds: float
) -> tuple[list[list[int]], int]:
    """The prompts of one run: the prompt set repeated until one pass over them lasts ``min_seconds``
    (timed on one untimed pass over the set first, which also warms the engine), and the repeat count.
    A run of a few ms is at the mercy of a timer tick or another process's burst; half a second is
    not."""
    if min_seconds <= 0:
        return prompts, 1
    t0 = time.perf_counter()
    for p in prompts:
        gen.generate(prompt_ids=p, num_samples=num_samples, fused_commit=True, **kwargs)
    once = time.perf_counter() - t0
    repeats = max(1, math.ceil(min_seconds / once)) if once > 0 else 1
    return prompts * repeats, repeats


def _device_memory_mib(gen) -> float | None:
    """GPU memory in use (total - free, all processes) after a run, when the loop runs on the GPU.
    sdar_rt allocates its device memory once per Generator, so this is its steady state; on a
    Jetson the GPU shares RAM with the CPU (tegrastats shows both)."""
    if gen.device != "cuda":
        return None
    from .. import _core

    free, total = _core.cuda_memory_info()
    return (total - free) / 2**20


def memory_run(gen, prompts, calls: int, kwargs: dict, on_call) -> dict:
    """RSS over many calls: the second half's mean should equal the first's (no growth per call)."""
    samples = []
    every = max(1, calls // 20)
    for i in range(calls):
        gen.generate(prompt_ids=prompts[i % len(prompts)], **kwargs)
        on_call()
        if i % every == 0 or i == calls - 1:
            samples.append((i + 1, rss_mib()))
    half = len(samples) // 2
    first = sum(m for _, m in samples[1:half]) / max(1, half - 1) if half > 1 else samples[0][1]
    second = sum(m for _, m in samples[half:]) / len(samples[half:])
    return {
        "calls": calls,
        "rss_mib": samples,
        "rss_first_half_mib": first,
        "rss_second_half_mib": second,
        "growth_mib": second - first,
    }
