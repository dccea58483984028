"""How a test runs an installed console script: the script pip wrote next to this interpreter, or,
where there is none (a source tree on PYTHONPATH), its entry point read from the installed metadata,
run by this interpreter."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path


def console_command(name: str) -> tuple[str, list[str]]:
    """(program, leading arguments) that run console script ``name``."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return str(script), []
    (ep,) = entry_points(group="console_scripts", name=name)
    module, func = ep.value.split(":")
    return sys.executable, ["-c", f"import sys; from {module} import {func}; sys.exit({func}())"]
