"""What every message says about a bfloat16 artifact: the same sentence from the exporter and from each
engine that refuses one, naming only flags sdar-export has."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from sdar_fixtures import tiny_artifact
from sdar_rt import ArtifactError, Generator

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bf16_artifact(tmp_path_factory):
    """The float32 tiny artifact relabelled bfloat16: what the engines read to decide is the manifest."""
    _, art = tiny_artifact(tmp_path_factory)
    dst = tmp_path_factory.mktemp("bf16") / "art"
    shutil.copytree(art, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["dtype"] = "bfloat16"
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def _messages(bf16_artifact) -> dict[str, str]:
    from sdar_export.config import SDARConfig
    from sdar_export.cpu_weights import unsupported_reason

    out = {"exporter": unsupported_reason(SDARConfig(), "bfloat16")}
    for engine in ("ort", "cpu", "auto"):
        with pytest.raises((ArtifactError, ValueError, RuntimeError)) as info:
            Generator(bf16_artifact, engine=engine)
        out[engine] = str(info.value)
    return out


def test_every_bf16_message_says_the_same_thing(bf16_artifact):
    from sdar_export.options import BF16_RUNS_ON

    messages = _messages(bf16_artifact)
    for where, text in messages.items():
        assert BF16_RUNS_ON in text, (where, text)
        assert "runs on ONNX Runtime" not in text.replace(BF16_RUNS_ON, ""), (where, text)


def test_bf16_messages_name_only_flags_sdar_export_has(bf16_artifact):
    from sdar_export.cli import parser

    flags = set(parser()._option_string_actions)
    flag = re.compile(r"--[a-z0-9][a-z0-9-]*")
    named = {f for text in _messages(bf16_artifact).values() for f in flag.findall(text)}
    assert named, "the messages should say which flag to export with"
    assert named <= flags, named - flags
    assert "--fp32" not in named
