"""``python -m sdar_export`` == ``sdar-export``, a missing optional extra said in one line."""

from sdar_rt.console import export

raise SystemExit(export())
