"""A view of a dense SDAR checkpoint that other runtimes' converters read as a Qwen3 model.

SDAR checkpoints are Qwen3-architecture networks (``SDARForCausalLM``) with the same weight names;
only config.json's ``model_type`` / ``architectures`` differ. The view is a directory of symlinks to
the checkpoint's files with a rewritten config.json, so nothing is copied and the weights are identical.
"""

from __future__ import annotations

import json
from pathlib import Path


def qwen3_view(model_dir: Path, where: Path, what: str) -> Path:
    """``where``/qwen3-view: ``model_dir`` seen as ``Qwen3ForCausalLM``; ``what`` names the caller in
    the error for a checkpoint that is not dense SDAR / Qwen3."""
    cfg = json.loads((model_dir / "config.json").read_text())
    if cfg.get("model_type") not in ("sdar", "qwen3"):
        raise RuntimeError(
            f"the {what} baseline handles dense SDAR (Qwen3) checkpoints, not "
            f"model_type {cfg.get('model_type')!r}"
        )
    view = where / "qwen3-view"
    view.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.name != "config.json":
            (view / f.name).symlink_to(f.resolve())
    cfg.update(model_type="qwen3", architectures=["Qwen3ForCausalLM"])
    (view / "config.json").write_text(json.dumps(cfg, indent=2))
    return view
