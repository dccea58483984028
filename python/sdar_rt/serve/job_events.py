"""The HTTP side of a queued job: its events as an async iterator that notices the client leaving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from .scheduler import Job


class ClientGone(Exception):
    """The client closed the connection before its answer was complete."""


async def disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def job_events(job: Job, request: Request) -> AsyncIterator[tuple[str, Any]]:
    """The job's events up to "done" or "error"; raises ClientGone (and cancels the job) when the
    client goes away first. Leaving early (aclose) cancels the job too."""
    gone = asyncio.ensure_future(disconnected(request))
    finished = False
    try:
        while True:
            get = asyncio.ensure_future(job.events.get())
            await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                raise ClientGone()
            event = get.result()
            finished = event[0] in ("done", "error")
            yield event
            if finished:
                return
    finally:
        gone.cancel()
        if not finished:
            job.cancelled.set()
