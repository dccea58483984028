"""Child process of tests/test_export_trt.py's install tests: runs ``sdar-export ARTIFACT --engine trt``
(with the recording TensorRT of tests/trt_fake.py) in an interpreter where only the modules named
in the JSON file ALLOWED import; every other top-level module raises ModuleNotFoundError, as it
would on a device where it is not installed.

    python trt_build_child.py ARTIFACT ALLOWED.json

Exit status: sdar-export's (its one-line error on stderr)."""

from __future__ import annotations

import importlib.abc
import json
import sys


class Refuse(importlib.abc.MetaPathFinder):
    def __init__(self, allowed: set[str]):
        self.allowed = allowed

    def find_spec(self, name, path=None, target=None):
        top = name.split(".", 1)[0]
        if top not in self.allowed:
            raise ModuleNotFoundError(f"No module named {top!r} (not in this install)", name=top)
        return None


def main() -> int:
    art, allowed_file = sys.argv[1], sys.argv[2]
    with open(allowed_file, encoding="utf-8") as f:
        allowed = set(json.load(f))
    sys.meta_path.insert(0, Refuse(allowed))
    from trt_fake import Recorder, fake_tensorrt

    sys.modules["tensorrt"] = fake_tensorrt(Recorder())
    from sdar_export import cli, trt_build

    trt_build.gpu_info = lambda: {"gpu": "Orin", "compute_capability": "8.7", "integrated": False}
    trt_build.device_free_memory = lambda: 64 << 30
    return cli.main([art, "--engine", "trt", "-q"])


if __name__ == "__main__":
    raise SystemExit(main())
