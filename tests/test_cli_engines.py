"""The commands that run an artifact take every engine Generator takes, and --threads says which
engine's threads it sets."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from console_scripts import console_command
from sdar_fixtures import packaged_artifact
from sdar_rt.cli import ENGINES


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return packaged_artifact(tmp_path_factory)


def _run(name: str, *args: str) -> subprocess.CompletedProcess:
    cmd, lead = console_command(name)
    return subprocess.run([cmd, *lead, *args], capture_output=True, text=True, timeout=300)


def test_the_cli_engines_are_the_generators(artifact):
    from sdar_rt import Generator

    with pytest.raises(ValueError) as info:
        Generator(artifact, engine="nonesuch")
    accepted = set(re.findall(r"'(\w+)'", str(info.value).split(" got ")[0]))  # the names it lists
    assert accepted == set(ENGINES), str(info.value)


@pytest.mark.parametrize("engine", ["auto", "cpu", "ort"])
def test_generate_runs_each_cpu_engine(artifact, engine):
    r = _run("sdar-generate", str(artifact), "sort: 5 9 1 3", "--engine", engine, "--threads", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["text"] == "1 3 5 9"


def test_trt_is_taken_and_refused_by_the_generator_not_the_parser(artifact):
    r = _run("sdar-generate", str(artifact), "x", "--engine", "trt")
    assert r.returncode == 2 and "invalid choice" not in r.stderr
    assert r.stderr.startswith("sdar-generate: error: ") and "TensorRT" in r.stderr


@pytest.mark.parametrize("name", ["sdar-generate", "sdar-demo", "sdar-chat", "sdar-serve"])
def test_help_lists_every_engine_and_the_threads_of_each(name):
    r = _run(name, "--help")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "{auto,cpu,ort,trt}" in text
    assert "the native CPU engine's pool" in text and "ONNX Runtime's intra-op threads" in text
