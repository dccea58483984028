"""``python -m sdar_rt.bench``: the same as ``sdar-bench``, a missing optional extra said in one line."""

from ..console import bench

raise SystemExit(bench())
