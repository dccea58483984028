"""``sdar-serve ARTIFACT``: the OpenAI-compatible server on one Generator."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
from pathlib import Path

from ..artifact import ArtifactError
from ..cli import add_engine_args


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so the address printed is the one in use.

    Made with protocol IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on the connections it accepts
    only when the socket says it is TCP. Without it, Nagle's algorithm holds each reply's last
    segment until the client's delayed ACK, about 40 ms for every request after the first on a
    kept-alive connection (how every OpenAI client talks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    sock.listen(2048)
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUEUE

    p = argparse.ArgumentParser(
        prog="sdar-serve",
        description="Serve an sdar_rt artifact over an OpenAI-compatible HTTP API "
        "(/v1/chat/completions, /v1/completions, /v1/models, /health).",
    )
    p.add_argument("artifact", help="artifact directory written by sdar-export")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    p.add_argument(
        "--model-name", default=None, help="the model id clients send (default: the artifact's dir name)"
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help="requests allowed to wait; more get HTTP 429 (default %(default)s)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="largest request body; larger gets HTTP 413 (default %(default)s)",
    )
    add_engine_args(p)
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page origin (e.g. http://localhost:3000) that may call the server from a browser; "
        "repeatable, '*' for any. Default: none (requests carrying another page's Origin get 403)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        help="require this key as 'Authorization: Bearer KEY' on /v1/ (the openai client's api_key); "
        "also read from SDAR_SERVE_API_KEY",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--no-access-log", action="store_true", help="do not log every request")
    a = p.parse_args(argv)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        from ..extras import missing_extra

        error = missing_extra(exc, "the OpenAI-compatible server")
        if error is None:
            raise
        _err(f"sdar-serve: error: {error}")
        return 2
    if a.max_queue < 1 or a.max_body_bytes < 1:
        _err("sdar-serve: error: --max-queue and --max-body-bytes must be positive")
        return 2
    api_key = a.api_key or os.environ.get("SDAR_SERVE_API_KEY") or None
    try:
        from ..generator import Generator

        gen = Generator(a.artifact, engine=a.engine, device=a.device, threads=a.threads)
        name = a.model_name or Path(a.artifact).resolve().name
        sock = _listen(a.host, a.port)
    except (ArtifactError, ValueError, RuntimeError, OSError) as exc:
        _err(f"sdar-serve: error: {exc}")
        return 2
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    spec = gen.spec
    _err(
        f"sdar-serve: serving '{name}' on http://{shown}:{port}/v1 (engine {type(gen.engine).__name__}, "
        f"batch {spec.batch}, block length {spec.block_length}, max context {spec.max_context})"
    )
    if api_key is None and not _loopback(host):
        _err(f"sdar-serve: warning: listening on {host} without --api-key: anyone who can reach this address "
             "can use the model")
    app = create_app(gen, model_name=name, max_queue=a.max_queue, max_body_bytes=a.max_body_bytes,
                     allow_origins=a.allow_origin, api_key=api_key)
    config = uvicorn.Config(
        app, log_level=a.log_level, access_log=not a.no_access_log, timeout_graceful_shutdown=5
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
