"""sdar-serve's OpenAPI schema: generated from the models the server validates with, it describes the
request bodies, every error status and the event stream, and schemathesis (``--checks all``, a
bounded run) finds nothing wrong between the schema and the server's answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sdar_fixtures import packaged_artifact

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_support import serve_process  # noqa: E402

MODEL = "tiny-sort"
CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    art = packaged_artifact(tmp_path_factory)
    log = tmp_path_factory.mktemp("schema") / "sdar-serve.log"
    with serve_process(art, log, "--model-name", MODEL) as (url, proc):
        yield url, proc, log, json.loads((art / "manifest.json").read_text())


def test_the_schema_describes_bodies_errors_and_streams(server):
    schema = httpx.get(f"{server[0]}/openapi.json").json()
    components = schema["components"]["schemas"]
    assert "HTTPValidationError" not in components
    requests = (("/v1/chat/completions", "ChatCompletionRequest"), ("/v1/completions", "CompletionRequest"))
    for path, model in requests:
        op = schema["paths"][path]["post"]
        body = op["requestBody"]["content"]["application/json"]["schema"]
        assert body == {"$ref": f"#/components/schemas/{model}"}
        assert set(op["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
        assert {"400", "403", "404", "413", "415", "429", "500", "503"} <= set(op["responses"])
        assert op["responses"]["429"]["headers"]["Retry-After"]["required"] is True
        props = components[model]["properties"]
        assert props["model"]["enum"] == [MODEL]
        assert props["denoising_steps"]["anyOf"][0]["maximum"] == 4       # the block length
        assert props["n"]["maximum"] == 1 and props["max_tokens"]["anyOf"][0]["type"] == "integer"
    prompt = components["CompletionRequest"]["properties"]["prompt"]["anyOf"]
    vocab = server[3]["model"]["vocab_size"]
    assert prompt[1]["items"]["maximum"] == prompt[3]["items"]["items"]["maximum"] == vocab - 1
    for ops in schema["paths"].values():
        for op in ops.values():
            assert "422" not in op["responses"]
            errors = [r for code, r in op["responses"].items() if code != "200"]
            refs = [r["content"]["application/json"]["schema"]["$ref"] for r in errors]
            assert refs and all(ref.endswith("/ErrorResponse") for ref in refs)


def test_schemathesis_finds_nothing(server, tmp_path):
    url, proc, log, _ = server
    cmd = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run",
           f"{url}/openapi.json", "--checks", "all", "--max-examples", "25", "--seed", "1", "--no-color",
           "--report", "junit", "--report-dir", str(tmp_path)]
    # In the test's own folder: schemathesis keeps a cache of what it found in its working directory.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-6000:]
    assert "No issues found" in r.stdout
    generated = [line for line in r.stdout.splitlines() if "generated" in line]
    assert generated and int(generated[-1].split()[0]) > 500, generated
    assert proc.poll() is None and "Traceback" not in log.read_text()
