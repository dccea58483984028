"""sdar-export with a Hugging Face Hub id, through huggingface_hub's real download code against a Hub
stand-in on loopback (HF_ENDPOINT): the download itself, an offline run from the populated cache, and
each refusal (missing, private, gated, not an SDAR model) as a one-line message before any weight is
fetched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hub_server import FakeHub, Repo

pytest.importorskip("huggingface_hub")
pytest.importorskip("torch")

REPO = "JetLM/SDAR-Tiny-Chat"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small SDAR checkpoint as a Hub repository holds it: the export's files and some it never reads."""
    from sdar_export.make_checkpoint import make_checkpoint

    root = tmp_path_factory.mktemp("hub-repo") / "ck"
    make_checkpoint(root, preset="tiny", seed=0, moe=False)
    (root / "README.md").write_text("model card\n")
    (root / "pytorch_model.bin").write_bytes(b"\0" * 4096)  # duplicate weights an export never reads
    return root


@pytest.fixture()
def hub(checkpoint, tmp_path):
    not_sdar = tmp_path / "llama"
    not_sdar.mkdir()
    (not_sdar / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (not_sdar / "model.safetensors").write_bytes(b"\0" * 65536)
    plain_ar = tmp_path / "qwen3"
    shutil.copytree(checkpoint, plain_ar)
    cfg = json.loads((plain_ar / "config.json").read_text())
    (plain_ar / "config.json").write_text(json.dumps(dict(cfg, model_type="qwen3")))
    with FakeHub() as server:
        server.repos[REPO] = Repo(checkpoint)
        server.repos["Gated/SDAR-Tiny"] = Repo(checkpoint, gated_token="hf_granted")
        server.repos["Private/SDAR-Tiny"] = Repo(checkpoint, private=True)
        server.repos["Meta/Llama-Tiny"] = Repo(not_sdar)
        server.repos["Qwen/Qwen3-Tiny"] = Repo(plain_ar)
        yield server


def _export(hub: FakeHub, tmp_path: Path, *args: str, offline: bool = False, token: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "sdar_export", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("sdar-export: error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_hub_id_downloads_only_what_the_export_reads_then_exports_offline_from_the_cache(hub, tmp_path):
    r = _export(hub, tmp_path, REPO, "--fp16", "--max-context", "64")
    assert r.returncode == 0, r.stderr
    art = tmp_path / "SDAR-Tiny-Chat-sdar_rt-fp16"  # in the current directory, not inside the HF cache
    assert (tmp_path / r.stdout.strip().splitlines()[-1]).resolve() == art.resolve()
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["dtype"] == "float16"
    fetched = hub.downloaded()
    assert fetched[0] == "config.json"  # checked before the weights
    assert sorted(set(fetched)) == ["config.json", "generation_config.json", "model.safetensors",
                                    "tokenizer.json", "tokenizer_config.json"]
    snapshots = list((tmp_path / "hf-home" / "hub").glob("models--JetLM--SDAR-Tiny-Chat/snapshots/*"))
    assert len(snapshots) == 1 and not (snapshots[0] / "pytorch_model.bin").exists()

    # Offline from the populated cache: no request reaches the server, the same artifact comes out.
    before = len(hub.requests)
    r = _export(hub, tmp_path, REPO, "--fp16", "--max-context", "64", "-o", "offline-art", offline=True)
    assert r.returncode == 0, r.stderr
    assert len(hub.requests) == before
    assert (tmp_path / "offline-art" / "manifest.json").is_file()
    offline = json.loads((tmp_path / "offline-art" / "manifest.json").read_text())
    assert offline["source"] == manifest["source"]


def test_offline_and_not_cached(hub, tmp_path):
    line = _one_line_error(_export(hub, tmp_path, REPO, "--fp16", offline=True))
    assert "not in the Hugging Face cache and HF_HUB_OFFLINE is set" in line
    assert hub.requests == []


def test_no_network_and_not_cached(hub, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    hub_elsewhere = type("Closed", (), {"url": closed})()
    line = _one_line_error(_export(hub_elsewhere, tmp_path, REPO, "--fp16"))
    assert f"cannot reach {closed} to download {REPO}" in line


def test_missing_repository(hub, tmp_path):
    line = _one_line_error(_export(hub, tmp_path, "JetLM/SDAR-Nonexistent", "--fp16"))
    assert "JetLM/SDAR-Nonexistent: no such model repository on" in line


def test_private_repository_without_credentials(hub, tmp_path):
    line = _one_line_error(_export(hub, tmp_path, "Private/SDAR-Tiny", "--fp16"))
    assert "HTTP 401" in line and "HF_TOKEN" in line


def test_gated_repository_refused_without_access_and_fetched_with_hf_token(hub, tmp_path):
    line = _one_line_error(_export(hub, tmp_path, "Gated/SDAR-Tiny", "--fp16", token="hf_wrong"))
    assert "gated repository" in line and "HF_TOKEN" in line
    assert hub.downloaded() == []
    r = _export(hub, tmp_path, "Gated/SDAR-Tiny", "--fp16", "--max-context", "64", "--skip-validate",
                token="hf_granted")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "SDAR-Tiny-sdar_rt-fp16" / "manifest.json").is_file()


@pytest.mark.parametrize(("repo", "says"), [
    ("Meta/Llama-Tiny", "is not an SDAR model sdar-export can export: "),
    ("Qwen/Qwen3-Tiny", "is a plain autoregressive 'qwen3' model, not an SDAR block-diffusion model"),
])
def test_not_an_sdar_model_is_refused_before_its_weights_are_downloaded(hub, tmp_path, repo, says):
    line = _one_line_error(_export(hub, tmp_path, repo, "--fp16"))
    assert f"{repo} {says}" in line
    assert hub.downloaded() == ["config.json"]


def test_missing_revision_and_revision_of_a_local_dir(hub, tmp_path, checkpoint):
    line = _one_line_error(_export(hub, tmp_path, REPO, "--revision", "v9"))
    assert "--revision" in line
    line = _one_line_error(_export(hub, tmp_path, str(checkpoint), "--revision", "v9"))
    assert "--revision applies to a Hugging Face Hub id" in line


def test_chat_and_bench_take_a_hub_id(hub, tmp_path):
    """From a Hub id to a conversation: sdar-chat fetches the shipped trained checkpoint (served as a
    Hub repository), exports it into the artifact cache, named by the repository, and answers."""
    from console_scripts import console_command
    from sdar_fixtures import PACKAGED_CHECKPOINT

    hub.repos["JetLM/SDAR-Sort-Chat"] = Repo(PACKAGED_CHECKPOINT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    cmd, lead = console_command("sdar-chat")
    r = subprocess.run([cmd, *lead, "JetLM/SDAR-Sort-Chat"], input="sort: 5 9 1 3\n/stats\n", env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "1 3 5 9" in r.stdout and "prompt tokens reused" in r.stdout
    (art,) = [p for p in (tmp_path / "cache" / "sdar_rt" / "artifacts").glob("SDAR-Sort-Chat-*-L4-*")
              if p.is_dir()]
    assert (art / "manifest.json").is_file()

    cmd, lead = console_command("sdar-bench")
    r = subprocess.run([cmd, *lead, "JetLM/SDAR-Missing"], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "JetLM/SDAR-Missing: no such model repository on" in r.stderr.strip().splitlines()[-1]
