"""Where an export writes: a staging directory next to the output, renamed into place at the end,
so an interrupted or failed export never leaves a directory that looks like a valid artifact (nor
any debris), and a forced export keeps the previous artifact until the new one is complete."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ExportError


class Staging:
    """``with Staging(out) as stage:`` ... ``stage.commit()``. ``stage.dir`` becomes the artifact;
    ``stage.scratch`` holds intermediate files (never part of the artifact). A full disk or an
    unwritable path becomes an ExportError naming the place and the fix."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def __enter__(self) -> Staging:
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.dir = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
            self.scratch = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.scratch-", dir=self.out.parent))
        except OSError as e:
            raise disk_error(e, self.out.parent) from e
        return self

    def commit(self) -> None:
        """Rename the finished staging dir to ``out``; an existing ``out`` (--force) is moved aside
        first and deleted only after the new artifact is in place."""
        old = None
        out = self.out
        if out.exists() or out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        try:
            os.replace(self.dir, out)
        except OSError:
            if old is not None:
                os.replace(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()

    def __exit__(self, kind, e, tb) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        if isinstance(e, OSError):
            raise disk_error(e, self.out.parent) from e
        if isinstance(e, RuntimeError) and "No space left on device" in str(e):
            # torch / onnx report a full disk from C++ as RuntimeError
            raise disk_error(OSError(errno.ENOSPC, str(e)), self.out.parent) from e


def disk_error(e: OSError, where: Path) -> ExportError:
    if e.errno == errno.ENOSPC:
        try:
            free = shutil.disk_usage(where).free / 2**30
            extra = f" ({free:.2f} GiB free there)"
        except OSError:
            extra = ""
        return ExportError(f"disk full while writing the artifact under {where}{extra}. Free space or choose "
                           "another output directory with -o; nothing was left at the output path.")
    return ExportError(f"cannot write the artifact under {where}: {e.strerror or e}. Check the path and its "
                       "permissions; nothing was left at the output path.")
