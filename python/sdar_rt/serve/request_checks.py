"""What a completion request must pass before it is queued: the body's size and shape, the model
name, the prompt (chat template applied, token ids in range) and the decoding parameters, including
the room left in the context. Each failure is an ApiError with OpenAI's status and body."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..generator import Generator
from .errors import ApiError, invalid_body
from .job_events import ClientGone

# Bodies from this size on are parsed and tokenized on a worker thread: a 1 MB chat takes ~0.8 s of
# CPU, which on the event loop would hold every other request (and /health) that long.
OFF_LOOP_BYTES = 16 << 10
JSON = "application/json"


class RequestChecks:
    def __init__(self, generator: Generator, model_name: str, max_body_bytes: int):
        self.gen = generator
        self.model_name = model_name
        self.max_body_bytes = max_body_bytes

    async def read(self, request: Request, model: type[BaseModel]) -> Any:
        """The body as ``model``. Only ``application/json`` is read (a web page can send a
        ``text/plain`` body cross-site without asking first; see sdar_rt.serve.access). Sets
        ``request.state.large`` for a body that is parsed, and is to be tokenized, off the loop.
        Raises ClientGone when the client leaves during the upload."""
        kind = request.headers.get("content-type", "")
        if kind.split(";", 1)[0].strip().lower() != JSON:
            shown = f"'{kind}'" if kind else "none"
            message = f"send the body as JSON with 'Content-Type: {JSON}' (the request's type: {shown})"
            raise ApiError(415, message, code="unsupported_media_type")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large()
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.max_body_bytes:
                    raise self._too_large()
                chunks.append(chunk)
        except ClientDisconnect:
            raise ClientGone() from None
        request.state.large = size >= OFF_LOOP_BYTES
        if request.state.large:
            return await run_in_threadpool(self._parse, b"".join(chunks), model)
        return self._parse(b"".join(chunks), model)

    @staticmethod
    def _parse(raw: bytes, model: type[BaseModel]) -> Any:
        try:
            return model.model_validate_json(raw)
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

    def prompt_ids(self, body: Any, chat: bool) -> list[int]:
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

    def params(self, body: Any, chat: bool, prompt_tokens: int) -> dict[str, Any]:
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
            ("eb_threshold", "eb_threshold"),
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
