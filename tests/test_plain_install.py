"""Every console script as a plain ``pip install`` (no torch, no extras) runs it: the optional modules
are made unimportable in the child process (a ``sitecustomize`` on PYTHONPATH that refuses them on
``sys.meta_path``). A command either works or ends with exit status 2 and one line that names the
extra to install; never a traceback."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest
from console_scripts import console_command
from sdar_fixtures import PACKAGED_CHECKPOINT, packaged_artifact

# What the extras bring (pyproject.toml's optional-dependencies) and what the test extra adds.
OPTIONAL = ("torch", "safetensors", "onnx", "huggingface_hub", "fastapi", "starlette", "uvicorn", "pydantic",
            "matplotlib", "onnxruntime_genai", "onnx_ir", "onnxscript", "transformers", "httpx", "openai")

BLOCKER = f'''
import sys

BLOCKED = {OPTIONAL!r}


class PlainInstall:
    """Refuses the optional modules, as an environment without them would."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, PlainInstall())
'''


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return packaged_artifact(tmp_path_factory)


@pytest.fixture()
def run(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(textwrap.dedent(BLOCKER))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_HUB_OFFLINE")}
    env.update(PYTHONPATH=str(blocker), XDG_CACHE_HOME=str(tmp_path / "empty-cache"),
               HF_HOME=str(tmp_path / "hf"))

    def run(name: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
        cmd, lead = console_command(name)
        return subprocess.run([cmd, *lead, *args], input=stdin, capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=600)

    run.env = env
    return run


def _says_extra(r: subprocess.CompletedProcess, prog: str, extra: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
    assert len(lines) == 1, r.stderr
    assert f'pip install "sdar_rt[{extra}]"' in lines[0], lines[0]
    return lines[0]


def test_the_blocker_hides_installed_modules(run):
    import sys

    script = "import importlib.util, torch; print(importlib.util.find_spec('fastapi') is not None)"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=run.env)
    assert r.returncode == 1 and "No module named 'torch'" in r.stderr
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "True"  # installed here: only the blocker hides them


def test_export_names_the_export_extra(run):
    line = _says_extra(run("sdar-export", str(PACKAGED_CHECKPOINT)), "sdar-export", "export")
    assert "needs the export extra" in line and "torch" in line


def test_export_of_a_hub_id_names_the_export_extra(run):
    r = run("sdar-export", "JetLM/SDAR-1.7B-Chat", "--fp16")
    line = _says_extra(r, "sdar-export", "export")
    assert "huggingface_hub" in line


def test_demo_without_a_cached_artifact_names_the_export_extra(run):
    _says_extra(run("sdar-demo"), "sdar-demo", "export")


def test_chat_of_a_checkpoint_names_the_export_extra(run):
    _says_extra(run("sdar-chat", str(PACKAGED_CHECKPOINT)), "sdar-chat", "export")


def test_bench_without_a_cached_artifact_names_the_export_extra(run):
    _says_extra(run("sdar-bench"), "sdar-bench", "export")


def test_python_dash_m_entry_points_name_the_export_extra(run):
    """``python -m sdar_export`` and ``python -m sdar_rt.bench`` go the console scripts' way."""
    import sys

    for module, prog, args in (("sdar_export", "sdar-export", [str(PACKAGED_CHECKPOINT)]),
                               ("sdar_rt.bench", "sdar-bench", [str(PACKAGED_CHECKPOINT)])):
        r = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=run.env,
                           timeout=600)
        _says_extra(r, prog, "export")


def test_serve_names_the_serve_extra(run, artifact):
    line = _says_extra(run("sdar-serve", str(artifact)), "sdar-serve", "serve")
    assert "the OpenAI-compatible server" in line


def test_generate_and_chat_run_an_artifact(run, artifact):
    from sdar_rt import Generator

    gen = Generator(artifact)
    r = run("sdar-generate", str(artifact), "sort: 5 9 1 3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == gen.generate("sort: 5 9 1 3").text == "1 3 5 9"
    r = run("sdar-chat", str(artifact), stdin="sort: 8 2 6 4\n/stats\n")  # no terminal: lines from stdin
    assert r.returncode == 0, r.stderr
    conv = gen.session()
    room = gen.artifact.max_context - conv.prompt_length("sort: 8 2 6 4")  # sdar-chat caps replies at it
    assert conv.send("sort: 8 2 6 4", max_new_tokens=min(512, room)).text in r.stdout
    assert "prompt tokens reused from the KV cache" in r.stdout


def test_bench_measures_an_artifact(run, artifact, tmp_path):
    r = run("sdar-bench", str(artifact), "--runs", "1", "--warmup", "0", "--max-new-tokens", "8",
            "--json", str(tmp_path / "report.json"))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and (tmp_path / "report.json").is_file()
