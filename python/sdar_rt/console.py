"""The console scripts. Each imports its command only when it runs, through
``sdar_rt.extras.run_command``, so that a command whose optional extra is not installed says so in one
line instead of failing with a traceback at import."""

from __future__ import annotations

from .extras import run_command


def export() -> int:
    return run_command("sdar-export", "sdar_export.cli")


def generate() -> int:
    return run_command("sdar-generate", "sdar_rt.cli", "generate_main")


def demo() -> int:
    return run_command("sdar-demo", "sdar_rt.cli", "demo_main")


def chat() -> int:
    return run_command("sdar-chat", "sdar_rt.chat_cli")


def bench() -> int:
    return run_command("sdar-bench", "sdar_rt.bench.cli")


def serve() -> int:
    return run_command("sdar-serve", "sdar_rt.serve.cli")
