"""The FastAPI application: /v1/chat/completions, /v1/completions, /v1/models, /health.

Each completion request is validated, tokenized and checked against the context here, then queued
as one Job (scheduler.py). Streaming answers are server-sent events, one chunk per finished block
(and, with ``show_unmasking``, one per denoising step), ending with ``data: [DONE]``. A client that
goes away cancels its job, whether it waits or runs.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..generator import GenerationOutput, Generator
from ..unmasking import UnmaskingStep
from .errors import ApiError, from_generation, invalid_body
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    SdarUsage,
    UnmaskingState,
    Usage,
)
from .scheduler import Job, QueueFull, Scheduler, ShuttingDown

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_QUEUE = 64


class _ClientGone(Exception):
    pass


def create_app(
    generator: Generator,
    *,
    model_name: str,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The server for one Generator. The scheduler's worker starts with the app and stops with it."""
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
        state.check_model(model_id)
        return state.card

    @app.post("/v1/chat/completions", response_model=ChatCompletion)
    async def chat_completions(request: Request) -> Response:
        body = await state.read(request, ChatCompletionRequest)
        return await state.complete(request, body, chat=True)

    @app.post("/v1/completions", response_model=Completion)
    async def completions(request: Request) -> Response:
        body = await state.read(request, CompletionRequest)
        return await state.complete(request, body, chat=False)

    return app


class _Server:
    def __init__(self, generator: Generator, model_name: str, max_queue: int, max_body_bytes: int):
        self.gen = generator
        self.model_name = model_name
        self.max_body_bytes = max_body_bytes
        self.scheduler = Scheduler(generator, max_queue)
        spec = generator.spec
        self.card = ModelCard(
            id=model_name,
            created=int(time.time()),
            max_context=spec.max_context,
            block_length=spec.block_length,
            batch=spec.batch,
        )

    # ------------------------------------------------------------------ request checks
    async def read(self, request: Request, model: type[BaseModel]) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            chunks.append(chunk)
        try:
            return model.model_validate_json(b"".join(chunks))
        except ValidationError as exc:
            raise invalid_body(exc) from None

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            f"the request body is larger than this server's limit of {self.max_body_bytes} bytes",
            code="request_too_large",
        )

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(
                404,
                f"the model '{name}' does not exist; this server serves '{self.model_name}' (GET /v1/models)",
                type="not_found_error",
                param="model",
                code="model_not_found",
            )

    def _prompt_ids(self, body: Any, chat: bool) -> list[int]:
        tok = self.gen.tokenizer
        if chat:
            if tok.chat_template is None:
                raise ApiError(400, "this model has no chat template: use /v1/completions", param="messages")
            messages = []
            for i, m in enumerate(body.messages):
                content = m.content if m.content is not None else ""
                if isinstance(content, list):
                    if any(part.type != "text" or part.text is None for part in content):
                        raise ApiError(
                            400,
                            f"messages.{i}.content: only text parts are supported",
                            param=f"messages.{i}.content",
                        )
                    content = "".join(part.text for part in content)
                messages.append({"role": "system" if m.role == "developer" else m.role, "content": content})
            try:
                ids = tok.encode(tok.apply_chat_template(messages))
            except Exception as exc:  # noqa: BLE001 - the template's own message (raise_exception)
                raise ApiError(
                    400, f"the chat template rejected the messages: {exc}", param="messages"
                ) from None
        else:
            prompt = body.prompt
            if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
                if len(prompt) != 1:
                    raise ApiError(
                        400,
                        "one prompt per request: send the prompts as separate requests "
                        "(they run together when the artifact's batch allows)",
                        param="prompt",
                    )
                prompt = prompt[0]
            ids = tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
            vocab = self.gen.spec.vocab_size
            if any(not 0 <= t < vocab for t in ids):
                raise ApiError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        if not ids:
            raise ApiError(400, "the prompt encodes to zero tokens", param="messages" if chat else "prompt")
        return ids

    def _params(self, body: Any, chat: bool, prompt_tokens: int) -> dict[str, Any]:
        unsupported = [
            ("n", body.n != 1, "n must be 1 (send separate requests)"),
            ("presence_penalty", body.presence_penalty not in (None, 0), "presence_penalty is not supported"),
            (
                "frequency_penalty",
                body.frequency_penalty not in (None, 0),
                "frequency_penalty is not supported",
            ),
            ("logit_bias", bool(body.logit_bias), "logit_bias is not supported"),
            ("logprobs", bool(body.logprobs), "logprobs are not supported"),
        ]
        if chat:
            unsupported += [
                ("tools", bool(body.tools), "tools are not supported"),
                (
                    "response_format",
                    body.response_format not in (None, {"type": "text"}),
                    "response_format other than text is not supported",
                ),
            ]
        else:
            unsupported += [
                ("echo", bool(body.echo), "echo is not supported"),
                ("suffix", bool(body.suffix), "suffix is not supported"),
                ("best_of", body.best_of not in (None, 1), "best_of must be 1"),
            ]
        for param, bad, message in unsupported:
            if bad:
                raise ApiError(400, message, param=param, code="unsupported_parameter")
        if body.show_unmasking and not body.stream:
            raise ApiError(
                400,
                "show_unmasking streams the denoising steps: it needs stream=true",
                param="show_unmasking",
            )
        spec = self.gen.spec
        L = spec.block_length
        if body.denoising_steps is not None and body.denoising_steps > L:
            raise ApiError(
                400,
                f"denoising_steps must be in [1, block_length={L}], got {body.denoising_steps}",
                param="denoising_steps",
            )
        requested = body.max_tokens
        if chat and body.max_completion_tokens is not None:
            requested = body.max_completion_tokens
        room = spec.max_context - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            asked = (
                f"{requested} in the completion" if requested is not None else "at least 1 in the completion"
            )
            raise ApiError(
                400,
                f"this model's maximum context length is {spec.max_context} tokens; the request needs "
                f"{prompt_tokens} in the {'messages' if chat else 'prompt'} and {asked}: shorten the "
                "prompt or lower max_tokens",
                param="max_tokens" if room >= 1 else ("messages" if chat else "prompt"),
                code="context_length_exceeded",
            )
        params: dict[str, Any] = {"max_new_tokens": requested if requested is not None else room}
        for name, key in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("top_k", "top_k"),
            ("seed", "seed"),
            ("threshold", "threshold"),
            ("denoising_steps", "denoising_steps"),
            ("remasking", "remasking"),
            ("fused_commit", "fused_commit"),
        ):
            value = getattr(body, name)
            if value is not None:
                params[key] = value
        if body.stop:
            params["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop)
        return params

    # ------------------------------------------------------------------ completion
    async def complete(self, request: Request, body: Any, chat: bool) -> Response:
        self.check_model(body.model)
        prompt_ids = self._prompt_ids(body, chat)
        params = self._params(body, chat, len(prompt_ids))
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
        events = _job_events(job, request)
        reply = _Reply(self, body, job, chat, len(prompt_ids))
        try:
            first = await anext(events)  # errors found before any output get their own status
        except _ClientGone:
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
        except _ClientGone:
            return Response(status_code=499)
        finally:
            await events.aclose()
        body = reply.whole(value).model_dump(mode="json")
        for choice in body["choices"]:
            if choice["token_ids"] is None:
                del choice["token_ids"]  # only when asked for (return_token_ids)
        return JSONResponse(body)


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _job_events(job: Job, request: Request) -> AsyncIterator[tuple[str, Any]]:
    """The job's events up to "done" or "error"; raises _ClientGone (and cancels the job) when the
    client goes away first. Leaving early (aclose) cancels the job too."""
    gone = asyncio.ensure_future(_disconnected(request))
    finished = False
    try:
        while True:
            get = asyncio.ensure_future(job.events.get())
            await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not get.done():
                get.cancel()
                raise _ClientGone()
            event = get.result()
            finished = event[0] in ("done", "error")
            yield event
            if finished:
                return
    finally:
        gone.cancel()
        if not finished:
            job.cancelled.set()


class _Reply:
    """Builds the response bodies of one request."""

    def __init__(self, server: _Server, body: Any, job: Job, chat: bool, prompt_tokens: int):
        self.server = server
        self.body = body
        self.job = job
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def usage(self, out: GenerationOutput) -> Usage:
        gen, stats, params = self.server.gen, out.stats, self.job.params
        L = gen.spec.block_length
        queued = (self.job.started or self.job.submitted) - self.job.submitted
        sdar = SdarUsage(
            threshold=params.get("threshold", 0.9),
            denoising_steps=params.get("denoising_steps", L),
            remasking=params.get("remasking", "low_confidence_dynamic"),
            fused_commit=params.get("fused_commit", True),
            block_length=L,
            blocks=len(stats.get("steps_per_block", [])),
            steps_per_block=list(stats.get("steps_per_block", [])),
            nfe=stats.get("nfe", 0),
            nfe_prefill=stats.get("nfe_prefill", 0),
            decode_forwards=stats.get("decode_forwards", 0),
            tpf=stats.get("tpf", 0.0),
            batch_rows=self.job.batch_rows,
            queue_seconds=queued,
            time_to_first_block=stats.get("time_to_first_block", 0.0),
            generation_seconds=stats.get("total_seconds", 0.0),
        )
        completion = len(out.token_ids)
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=stats.get("cached_tokens", 0)),
            sdar=sdar,
        )

    def _token_ids(self, out: GenerationOutput) -> list[int] | None:
        return list(out.token_ids) if self.body.return_token_ids else None

    def whole(self, out: GenerationOutput) -> BaseModel:
        model = self.server.model_name
        if self.chat:
            choice = ChatChoice(
                message=AssistantMessage(content=out.text),
                finish_reason=out.finish_reason,
                token_ids=self._token_ids(out),
            )
            return ChatCompletion(
                id=self.id, created=self.created, model=model, choices=[choice], usage=self.usage(out)
            )
        choice = CompletionChoice(
            text=out.text, finish_reason=out.finish_reason, token_ids=self._token_ids(out)
        )
        return Completion(
            id=self.id, created=self.created, model=model, choices=[choice], usage=self.usage(out)
        )

    # ------------------------------------------------------------------ streaming
    def _chunk(
        self, delta: str | None, finish_reason: str | None = None, *, role: bool = False, **extra: Any
    ) -> str:
        if self.chat:
            content: dict[str, Any] = {}
            if role:
                content["role"] = "assistant"
            if delta is not None:
                content["content"] = delta
            choice: dict[str, Any] = {
                "index": 0,
                "delta": content,
                "finish_reason": finish_reason,
                "logprobs": None,
            }
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": finish_reason, "logprobs": None}
            kind = "text_completion"
        chunk = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.server.model_name,
            "choices": [choice],
            **extra,
        }
        return _sse(chunk)

    def _step(self, step: UnmaskingStep) -> str:
        tok = self.server.gen.tokenizer
        state = UnmaskingState(
            block=step.block,
            step=step.step,
            position=step.position,
            token_ids=step.tokens,
            tokens=[
                None if m else tok.decode([t], skip_special_tokens=False)
                for t, m in zip(step.tokens, step.masked, strict=True)
            ],
            masked=step.masked,
            prompt_positions=step.prompt_positions,
        )
        return self._chunk(None, unmasking=state.model_dump())

    async def sse(self, first: tuple[str, Any], events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[str]:
        try:
            yield self._chunk("" if self.chat else None, role=self.chat)
            event = first
            while True:
                kind, value = event
                if kind == "text":
                    yield self._chunk(value)
                elif kind == "step":
                    yield self._step(value)
                elif kind == "error":
                    yield _sse(from_generation(value).body())
                    break
                else:  # done
                    yield self._chunk(
                        None,
                        value.finish_reason,
                        **({"token_ids": list(value.token_ids)} if self.body.return_token_ids else {}),
                    )
                    options = self.body.stream_options
                    if options is not None and options.include_usage:
                        usage = self.usage(value).model_dump(mode="json")
                        yield _sse(
                            {
                                "id": self.id,
                                "object": "chat.completion.chunk" if self.chat else "text_completion",
                                "created": self.created,
                                "model": self.server.model_name,
                                "choices": [],
                                "usage": usage,
                            }
                        )
                    break
                event = await anext(events)
            yield "data: [DONE]\n\n"
        except _ClientGone:
            return
        finally:
            await events.aclose()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
