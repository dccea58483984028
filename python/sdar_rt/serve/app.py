"""The FastAPI application: /v1/chat/completions, /v1/completions, /v1/models, /health.

Each completion request is validated, tokenized and checked against the context (request_checks.py),
queued as one Job (scheduler.py) and answered by replies.py: a JSON body, or server-sent events, one
chunk per finished block (and, with ``show_unmasking``, one per denoising step), ending with
``data: [DONE]``. A client that goes away cancels its job, whether it waits or runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generator import Generator
from .access import AccessPolicy
from .errors import ApiError, from_generation
from .job_events import ClientGone, job_events
from .openapi import build_schema
from .protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ModelCard,
    ModelList,
)
from .replies import Reply
from .request_checks import RequestChecks
from .scheduler import Job, QueueFull, Scheduler, ShuttingDown

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_QUEUE = 64
log = logging.getLogger("sdar_rt.serve")


def create_app(
    generator: Generator,
    *,
    model_name: str,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    allow_origins: list[str] | None = None,
    api_key: str | None = None,
) -> FastAPI:
    """The server for one Generator. The scheduler's worker starts with the app and stops with it.
    ``allow_origins``: web page origins that may call it (none by default; sdar_rt.serve.access);
    ``api_key``: required as a Bearer token on /v1/ when given."""
    state = _Server(generator, model_name, max_queue, max_body_bytes)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        state.scheduler.close()

    app = FastAPI(title="sdar-serve", version="1", lifespan=lifespan)
    app.state.sdar = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", type=kind)
        return JSONResponse(error.body(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        error = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")
        return JSONResponse(error.body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **state.scheduler.snapshot()}

    @app.get("/v1/models", response_model=ModelList)
    async def models() -> ModelList:
        return ModelList(data=[state.card])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model(model_id: str) -> ModelCard:
        state.checks.check_model(model_id)
        return state.card

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(request: Request) -> Response:
        return await state.complete(request, ChatCompletionRequest, chat=True)

    @app.post("/v1/completions", response_model=Completion)
    async def completions(request: Request) -> Response:
        return await state.complete(request, CompletionRequest, chat=False)

    def openapi() -> dict:
        if app.openapi_schema is None:
            spec = generator.spec
            app.openapi_schema = build_schema(app, model_name=model_name, block_length=spec.block_length,
                                              vocab_size=spec.vocab_size, api_key=api_key is not None)
        return app.openapi_schema

    app.openapi = openapi
    app.add_middleware(AccessPolicy, allowed_origins=allow_origins, api_key=api_key)
    if allow_origins:   # added last, so outermost: it answers the allowed origins' preflights
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=allow_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)
    return app


class _Server:
    def __init__(self, generator: Generator, model_name: str, max_queue: int, max_body_bytes: int):
        self.gen = generator
        self.model_name = model_name
        self.checks = RequestChecks(generator, model_name, max_body_bytes)
        self.scheduler = Scheduler(generator, max_queue)
        spec = generator.spec
        self.card = ModelCard(
            id=model_name,
            created=int(time.time()),
            max_context=spec.max_context,
            block_length=spec.block_length,
            batch=spec.batch,
        )

    # ------------------------------------------------------------------ completion
    async def complete(self, request: Request, model: type, chat: bool) -> Response:
        try:
            body = await self.checks.read(request, model)
        except ClientGone:
            log.debug("%s %s: the client left during the upload", request.method, request.url.path)
            return Response(status_code=499)
        self.checks.check_model(body.model)
        if request.state.large:   # tokenizing a long prompt takes a while: not on the event loop
            prompt_ids = await run_in_threadpool(self.checks.prompt_ids, body, chat)
        else:
            prompt_ids = self.checks.prompt_ids(body, chat)
        params = self.checks.params(body, chat, len(prompt_ids))
        job = Job(prompt_ids, params, asyncio.get_running_loop(), want_steps=body.show_unmasking)
        try:
            self.scheduler.submit(job)
        except QueueFull as exc:
            raise ApiError(
                429,
                f"too many requests: {exc}; retry later",
                type="rate_limit_error",
                code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            ) from None
        except ShuttingDown as exc:
            raise ApiError(503, str(exc), type="server_error") from None
        events = job_events(job, request)
        reply = Reply(self.gen, self.model_name, body, job, chat, len(prompt_ids))
        try:
            first = await anext(events)  # errors found before any output get their own status
        except ClientGone:
            return Response(status_code=499)
        if first[0] == "error":
            await events.aclose()
            raise from_generation(first[1])
        if body.stream:
            return StreamingResponse(
                reply.sse(first, events),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        try:
            kind, value = first
            while kind != "done":
                kind, value = await anext(events)
                if kind == "error":
                    raise from_generation(value)
        except ClientGone:
            return Response(status_code=499)
        finally:
            await events.aclose()
        body = reply.whole(value).model_dump(mode="json")
        for choice in body["choices"]:
            if choice["token_ids"] is None:
                del choice["token_ids"]  # only when asked for (return_token_ids)
        return JSONResponse(body)
