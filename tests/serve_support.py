"""Helpers for the server tests: sdar-serve as a child process or in this process, on a free
loopback port, and an engine that adds a fixed delay to every pass of a real one."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from sdar_rt import _core

_ADDRESS = re.compile(r"on (http://127\.0\.0\.1:\d+)/v1")


def wait_healthy(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"sdar-serve exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not become healthy in {timeout} s")


@contextlib.contextmanager
def serve_process(artifact: Path, log: Path, *args: str):
    """`sdar-serve ARTIFACT --port 0 ...` in a child process; yields (base url, process)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sdar_rt.serve.cli",
                str(artifact),
                "--port",
                "0",
                "--no-access-log",
                "--threads",
                "1",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        url = None
        while url is None:
            match = _ADDRESS.search(log.read_text())
            if match:
                url = match.group(1)
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sdar-serve did not start:\n{log.read_text()}")
            else:
                time.sleep(0.1)
        wait_healthy(url, proc=proc)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def serve_in_thread(generator, **app_kwargs):
    """The app on a free loopback port, served by uvicorn in a thread of this process; yields the
    base url. Lets a test hold the Generator (its core lock) to make requests wait."""
    with running_in_thread(generator, **app_kwargs) as (url, _server, _thread):
        yield url


@contextlib.contextmanager
def running_in_thread(generator, **app_kwargs):
    """As serve_in_thread; yields (base url, the uvicorn server, the thread running its loop)."""
    import uvicorn
    from sdar_rt.serve.app import create_app
    from sdar_rt.serve.cli import _listen

    app = create_app(generator, model_name=app_kwargs.pop("model_name", "tiny"), **app_kwargs)
    sock = _listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        wait_healthy(url)
        yield url, server, thread
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def wait_for(url: str, predicate, timeout: float = 30.0) -> dict:
    """Polls /health until predicate(health) holds; returns that health."""
    deadline = time.monotonic() + timeout
    while True:
        h = health(url)
        if predicate(h):
            return h
        if time.monotonic() > deadline:
            raise TimeoutError(f"server state never reached the expected one: {h}")
        time.sleep(0.02)


class SlowEngine(_core.Engine):
    """A real engine with `delay` seconds added to every pass (a slow device), counting passes."""

    def __init__(self, inner, delay: float):
        super().__init__()
        self.inner = inner
        self.delay = delay
        self.passes = 0

    def bind(self, bindings) -> None:
        self.inner.bind(bindings)

    def run(self, kind, past_len: int, tokens: int) -> None:
        self.passes += 1
        time.sleep(self.delay)
        self.inner.run(kind, past_len, tokens)
