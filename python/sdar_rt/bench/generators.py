"""sdar_rt's Generator for a benchmark artifact, built with the run's engine options."""

from __future__ import annotations


def sdar_generator(a, path):
    """sdar_rt's Generator for an artifact with the run's engine options; ``--cpu-kernels`` other than
    auto builds the CPU engine with that kernel table (to time, say, the AVX2 kernels on a CPU that
    also has AVX-512)."""
    from ..generator import Generator

    if a.cpu_kernels == "auto":
        return Generator(path, engine=a.engine, device=a.device, threads=a.threads)
    from ..artifact import load_artifact
    from ..cpu_engine import make_cpu_engine

    engine = make_cpu_engine(load_artifact(path), threads=a.threads, kernels=a.cpu_kernels)
    return Generator(path, engine=engine, device=a.device)
