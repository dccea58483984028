"""Every command of the README's shell blocks runs as written, in the order a reader meets them.

The Hub ids are served by the loopback Hub stand-in (the shipped checkpoint under the README's repo
name), so `sdar-export JetLM/... -o ...` runs the real download and export code. A command that needs
what this machine lacks (TensorRT, a 0.6B export and its peers) is run as far as it can go: its
arguments through the command's own parser, or its documented one-line refusal. The set-up commands
(`pip install`) are what CI itself runs. The Python examples: the first in
test_tiny_checkpoint.py, the `openai` one here against the `sdar-serve` command of the README.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from console_scripts import console_command
from hub_server import FakeHub, Repo
from sdar_fixtures import PACKAGED_CHECKPOINT
from serve_support import wait_healthy

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def shell_commands() -> list[str]:
    """The README's shell commands: comments dropped, continuation lines joined, in order."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


COMMANDS = shell_commands()
SETUP = [c for c in COMMANDS if c.startswith(("python -m pip install", "pip install"))]
# Run only through their own parser here: a 0.6B export and the peers take longer than a test should
# (docs/benchmarks.md has their measured runs).
PARSE_ONLY = [c for c in COMMANDS if c.split()[0] == "sdar-bench"]


class Parsed(Exception):
    """Raised in place of running a command once its arguments parsed."""


def parse_only(command: str, monkeypatch) -> None:
    """Parses `command`'s arguments with its console script's own parser, and stops there."""
    from importlib.metadata import entry_points

    name, *args = shlex.split(command)
    (ep,) = entry_points(group="console_scripts", name=name)
    module, func = ep.value.split(":")
    original = argparse.ArgumentParser.parse_args

    def stop(self, *a, **kw):
        original(self, *a, **kw)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.setattr(sys, "argv", [name, *args])
    with pytest.raises(Parsed):
        getattr(importlib.import_module(module), func)()


def test_the_readme_has_the_commands_this_test_runs():
    assert COMMANDS[:2] == SETUP[:2] and len(COMMANDS) > 10
    assert COMMANDS[0].endswith("&& sdar-demo") and COMMANDS[1].endswith("&& python -m pytest tests")
    # .ci/run runs the README's test command, character for character
    assert COMMANDS[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("command", PARSE_ONLY)
def test_bench_commands_parse(command, monkeypatch):
    parse_only(command, monkeypatch)


def test_a_bad_flag_does_not_parse(monkeypatch):
    with pytest.raises(SystemExit):
        parse_only("sdar-bench --no-such-flag", monkeypatch)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A reader's folder: the repository's relative paths, a local checkpoint, caches of its own."""
    work = tmp_path_factory.mktemp("reader")
    (work / "python" / "sdar_rt" / "checkpoints").mkdir(parents=True)
    (work / "python" / "sdar_rt" / "checkpoints" / "tiny").symlink_to(PACKAGED_CHECKPOINT)
    shutil.copytree(PACKAGED_CHECKPOINT, work / "my-sdar-checkpoint")
    return work


def run(command: str, work: Path, env: dict, stdin: str | None = None, timeout: float = 600):
    for name in {w for w in re.findall(r"(?:^|\| )(sdar-[a-z]+)", command)}:
        program, lead = console_command(name)
        command = re.sub(rf"(^|\| ){name}\b", rf"\1{shlex.join([program, *lead])}", command)
    return subprocess.run(["bash", "-c", command], cwd=work, env=env, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def test_every_readme_command_runs(workdir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(workdir / "hf-home"), XDG_CACHE_HOME=str(workdir / "cache"), NO_COLOR="1")
    done = set()
    with FakeHub() as hub:
        for repo in re.findall(r"sdar-export ([A-Za-z-]+/[\w.-]+) ", README):
            hub.repos[repo] = Repo(PACKAGED_CHECKPOINT)
        env["HF_ENDPOINT"] = hub.url
        for command in COMMANDS:
            if command in SETUP or command in PARSE_ONLY or command in done:
                continue
            done.add(command)
            if command.startswith("sdar-serve "):
                continue  # test_serve_command_and_the_openai_example
            stdin = "sort: 5 9 1 3\n/stats\n/exit\n" if command.startswith("sdar-chat ") else None
            result = run(command, workdir, env, stdin)
            if "--engine trt" in command and result.returncode != 0:
                # no TensorRT here: the documented one-line refusal, never a traceback
                assert "TensorRT" in result.stderr and "Traceback" not in result.stderr, result.stderr
                continue
            assert result.returncode == 0, f"{command}\n{result.stderr[-3000:]}"
            assert "Traceback" not in result.stderr
            prompt = re.search(r'"sort: ([\d ]+)"', command)
            if prompt and command.startswith(("sdar-generate", "echo")):
                digits = " ".join(sorted(prompt.group(1).split()))
                assert digits in result.stdout, (command, result.stdout)
            if command.startswith("sdar-chat "):
                assert "1 3 5 9" in result.stdout, result.stdout
    for art in ("tiny-artifact", "my-art", "sdar-1.7b"):
        assert (workdir / art / "manifest.json").is_file(), art


def test_serve_command_and_the_openai_example(workdir):
    pytest.importorskip("fastapi")
    pytest.importorskip("openai")
    (command,) = [c for c in COMMANDS if c.startswith("sdar-serve ")]
    artifact = workdir / shlex.split(command)[1]
    if not artifact.is_dir():
        export = "sdar-export python/sdar_rt/checkpoints/tiny -o tiny-artifact"
        result = run(export, workdir, dict(os.environ))
        assert result.returncode == 0, result.stderr
    program, lead = console_command("sdar-serve")
    log = workdir / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([program, *lead, *shlex.split(command)[1:], "--port", "0"], cwd=workdir,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for _ in range(600):
            time.sleep(0.1)
            found = re.search(r"(http://127\.0\.0\.1:\d+)/v1", log.read_text())
            if found:
                url = found.group(1)
                break
            if proc.poll() is not None:
                break
        assert url, log.read_text()
        wait_healthy(url, proc=proc)
        example = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "OpenAI(" in b]
        (code,) = example
        code = code.replace("http://127.0.0.1:8000", url)
        printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert printed.returncode == 0, printed.stderr
        for call, comment in re.findall(r"^(print\(.*?\))\s+# (.+)$", code, re.M):
            assert printed.stdout.splitlines()[0].strip() == comment.strip(), (call, printed.stdout)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
