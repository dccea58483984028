"""Child process of test_export_memory: one warm-up export of a tiny checkpoint (the libraries'
imports and one-time set-up, whatever the model's size), then the measured export. Prints JSON: the
RSS after the warm-up and the export's stage records."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from sdar_export.options import ExportOptions
from sdar_export.pipeline import run_export
from sdar_export.stages import release_freed_memory, rss_bytes


def main() -> None:
    checkpoint, warm_up, out, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    with tempfile.TemporaryDirectory() as tmp:
        run_export(ExportOptions(model_dir=warm_up, out_dir=Path(tmp) / "warm-up", quiet=True, **options))
    release_freed_memory()
    base = rss_bytes()
    result = run_export(ExportOptions(model_dir=checkpoint, out_dir=out, quiet=True, **options))
    print(json.dumps({"base": base, "checkpoint_bytes": result.checkpoint_bytes,
                      "stages": [{"name": s.name, "peak": s.peak_rss, "after": s.rss_after}
                                 for s in result.stages]}))


if __name__ == "__main__":
    main()
