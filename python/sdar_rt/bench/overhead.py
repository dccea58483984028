"""Measures the per-step overhead of the C++ -> Python engine crossing and of ORT rebinding.

    python -m sdar_rt.bench.overhead [ARTIFACT_DIR] [--tokens N]

1. A no-op Python engine: Stats.engine_seconds / forwards = the trampoline crossing (GIL
   reacquire, argument conversion) per step.
2. With an artifact: OrtEngine's time inside run() minus the time inside run_with_iobinding =
   the Python-side rebinding/bookkeeping per step.
"""

from __future__ import annotations

import argparse

from .. import _core


class _NoopEngine(_core.Engine):
    def bind(self, bindings) -> None:
        pass

    def run(self, kind, past_len: int, tokens: int) -> None:
        pass


def crossing_overhead(tokens: int = 2000, block_length: int = 4) -> float:
    """Seconds per engine call spent crossing from the C++ loop into a Python engine and back."""
    spec = _core.ModelSpec(
        num_layers=2,
        num_kv_heads=2,
        head_dim=8,
        vocab_size=64,
        block_length=block_length,
        max_context=tokens + 64,
        mask_id=63,
        eos_ids=[],
    )
    gen = _core.Generator(spec, _NoopEngine())
    cfg = _core.GenerationConfig(max_new_tokens=tokens, remasking="sequential", denoising_steps=block_length)
    stats = gen.generate([[1, 2, 3]], cfg).stats
    return stats.engine_seconds / stats.nfe


def ort_overhead(artifact_dir: str, tokens: int = 96) -> dict:
    from ..generator import Generator

    gen = Generator(artifact_dir, threads=1)
    gen.generate(prompt_ids=[1, 2, 3], max_new_tokens=8)  # warm-up
    before = gen.engine.timing()
    out = gen.generate(prompt_ids=[1, 2, 3], max_new_tokens=tokens, remasking="sequential")
    after = gen.engine.timing()
    runs = after["runs"] - before["runs"]
    ort = after["ort_seconds"] - before["ort_seconds"]
    py = after["python_seconds"] - before["python_seconds"]
    return {
        "runs": runs,
        "ort_per_step_us": ort / runs * 1e6,
        "rebind_per_step_us": (py - ort) / runs * 1e6,
        "crossing_per_step_us": (out.stats["engine_seconds"] - py) / runs * 1e6,
        "sampling_and_loop_per_step_us": (out.stats["total_seconds"] - out.stats["engine_seconds"])
        / runs
        * 1e6,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdar_rt.bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", nargs="?", default=None)
    p.add_argument("--tokens", type=int, default=2000)
    a = p.parse_args(argv)
    print(f"no-op engine crossing: {crossing_overhead(a.tokens) * 1e6:.1f} us per engine call")
    if a.artifact:
        for k, v in ort_overhead(a.artifact).items():
            print(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
