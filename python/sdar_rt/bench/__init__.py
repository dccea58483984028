"""sdar-bench: what generation costs on this machine, compared with other ways to run the same weights.

One module per job:

- ``cli``: the ``sdar-bench`` command line (options, exit status, JSON and plot files);
  ``run``: one benchmark run, start to report;
- ``targets``: the command line's target resolved into a checkpoint and its cached artifacts;
  ``prompts``: the prompt set;
- ``timing``: timed calls, summarised per run and over all runs; ``spread``: min/median/max over
  runs and when a spread is too large to trust;
- ``sweep``: sdar_rt over every configuration asked for; ``checks``: the token-equality checks that
  must pass before any speed is reported;
- ``compare``: two systems timed in alternating rounds; ``comparisons``: what sdar_rt is compared
  with (int4 vs float weights, its AR mode, ``reference``, ``ortgenai``); ``weights``: token
  agreement between two weight formats;
- ``machine``, ``summary``, ``tables``, ``plot``, ``progress``: what the user reads;
- ``overhead``: ``python -m sdar_rt.bench.overhead``, the per-step cost of the C++ -> Python crossing;
- ``kernels``: ``python -m sdar_rt.bench.kernels``, the CPU engine's matmul kernels against ONNX
  Runtime's MatMulNBits, and whole forwards of the CPU engine against the ONNX Runtime engine.

A stand-alone measurement goes here as its own module with a ``main`` for
``python -m sdar_rt.bench.NAME``. Nothing in the runtime imports this package.
"""

from .cli import main

__all__ = ["main"]
