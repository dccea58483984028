"""A Hugging Face Hub stand-in on loopback for the download tests: the endpoints huggingface_hub's
``hf_hub_download`` and ``snapshot_download`` call (repository info, file tree, file resolve), with the
Hub's status codes and ``X-Error-Code`` headers for a missing, private or gated repository. It serves
files from local directories, one per repository, and records every request so that a test can say
what was downloaded and in which order."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    root: Path
    gated_token: str | None = None  # gated: only this bearer token gets the files (others get 403)
    private: bool = False  # private: 401 for everyone (the Hub's answer to a missing token)
    commit: str = field(default_factory=lambda: hashlib.sha1(b"commit").hexdigest())

    def files(self) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file())


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest's output clean
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, body=False)

            def do_GET(self) -> None:
                hub._handle(self, body=True)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloaded(self) -> list[str]:
        """The files whose contents were served (GET on resolve), in order."""
        return [p.split("/resolve/", 1)[1].split("/", 1)[1] for m, p in self.requests
                if m == "GET" and "/resolve/" in p]

    # ------------------------------------------------------------------ serving
    def _handle(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        parts = path.strip("/").split("/")
        api = parts[:2] == ["api", "models"]
        repo_id = "/".join(parts[2:4] if api else parts[0:2])
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", "Repository not found")
        if repo.private:
            return self._error(h, 401, None, "Unauthorized")
        if repo.gated_token is not None and h.headers.get("Authorization") != f"Bearer {repo.gated_token}":
            return self._error(h, 403, "GatedRepo", "Access to this model is restricted")
        revision = parts[5] if api else parts[3] if len(parts) > 3 else None
        if revision is not None and revision not in ("main", repo.commit):
            return self._error(h, 404, "RevisionNotFound", "Invalid rev id")
        if api and parts[4:5] == ["revision"]:
            info = {"id": repo_id, "sha": repo.commit, "siblings": [{"rfilename": f} for f in repo.files()]}
            return self._json(h, info, body)
        if api and parts[4:5] == ["tree"]:
            return self._json(h, [self._tree_entry(repo, f) for f in repo.files()], body)
        if not api and parts[2:3] == ["resolve"]:
            return self._file(h, repo, "/".join(parts[4:]), body)
        return self._error(h, 404, None, "Not found")

    @staticmethod
    def _tree_entry(repo: Repo, name: str) -> dict:
        data = (repo.root / name).read_bytes()
        entry = {"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
        if name.endswith(".safetensors"):  # weights are LFS files on the Hub
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _file(self, h: BaseHTTPRequestHandler, repo: Repo, name: str, body: bool) -> None:
        p = repo.root / name
        if not p.is_file():
            return self._error(h, 404, "EntryNotFound", "Entry not found", repo.commit)
        data = p.read_bytes()
        h.send_response(200)
        h.send_header("Content-Length", str(len(data)))
        h.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        h.send_header("X-Repo-Commit", repo.commit)
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _json(h: BaseHTTPRequestHandler, obj, body: bool) -> None:
        data = json.dumps(obj).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    @staticmethod
    def _error(h: BaseHTTPRequestHandler, status: int, code: str | None, message: str,
               commit: str | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        h.send_response(status)
        if code:
            h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if commit:
            h.send_header("X-Repo-Commit", commit)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(data)
