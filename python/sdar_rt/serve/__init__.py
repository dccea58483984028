"""``sdar-serve``: an OpenAI-compatible HTTP server around one Generator (FastAPI + uvicorn).

Needs the ``serve`` extra (``pip install 'sdar_rt[serve]'``). ``create_app(generator, model_name=...)``
builds the ASGI application; ``sdar_rt.serve.cli.main`` is the command.
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
