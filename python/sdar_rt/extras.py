"""Which optional extra brings which module, and the one-line message that says so.

A plain ``pip install`` (no torch, no extras) must give every console script a one-line answer, never
a traceback: ``sdar_rt.console`` runs each command through :func:`run_command`, which turns an
``ImportError`` of an optional module into that message. Code that knows better what the module is for
raises :class:`MissingExtraError` itself (with :func:`missing_extra`). No import of any optional module
here.
"""

from __future__ import annotations

import importlib
import re
import sys

# Top-level module -> the extra of pyproject.toml that installs it.
EXTRA_OF_MODULE = {
    "torch": "export",
    "safetensors": "export",
    "onnx": "export",
    "huggingface_hub": "export",
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "pydantic": "serve",
    "matplotlib": "bench",
    "onnxruntime_genai": "bench",
    "onnx_ir": "bench",
    "onnxscript": "bench",
}

# What each extra is for, as the message says it.
PURPOSE = {
    "export": "exporting a checkpoint (or fetching one from the Hugging Face Hub)",
    "serve": "the OpenAI-compatible server",
    "bench": "this benchmark",
}

# The torch the README installs: its CPU build (an unpinned torch pulls gigabytes of CUDA wheels).
_TORCH_CPU = "torch's CPU build first: pip install torch==2.13.0"


class MissingExtraError(RuntimeError):
    """An optional module is not installed; the message names the extra that brings it."""


def missing_extra(exc: ImportError, purpose: str | None = None) -> MissingExtraError | None:
    """The one-line error for ``exc`` when it is an optional module's absence, else None."""
    name = getattr(exc, "name", None)
    if not name:  # lost when the error crossed a process boundary (pickled): read it from the message
        found = re.search(r"No module named '([^']+)'", str(exc))
        name = found.group(1) if found else ""
    name = name.split(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    if extra is None:
        return None
    hint = f'pip install "sdar_rt[{extra}]"'
    if extra == "export":
        hint += f" (and {_TORCH_CPU})"
    return MissingExtraError(f"{purpose or PURPOSE[extra]} needs the {extra} extra, which is not installed "
                             f"(no module {name!r}): {hint}")


def run_command(prog: str, module: str, function: str = "main") -> int:
    """Imports ``module`` and runs its ``function()``; an optional module missing on the way (at import
    or later) ends the command with one line on stderr and exit status 2."""
    try:
        main = getattr(importlib.import_module(module), function)
        return main()
    except ImportError as exc:
        error = missing_extra(exc)
        if error is None:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
        return 2
    except MissingExtraError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr, flush=True)
        return 2
