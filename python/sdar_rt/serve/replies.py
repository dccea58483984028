"""The response bodies of one completion request: the whole answer, or its server-sent events
(one chunk per finished block, one per denoising step with show_unmasking, the usage chunk when
asked, then ``data: [DONE]``)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel

from ..generator import GenerationOutput, Generator
from ..unmasking import UnmaskingStep
from .errors import from_generation
from .job_events import ClientGone
from .protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    Completion,
    CompletionChoice,
    PromptTokensDetails,
    SdarUsage,
    UnmaskingState,
    Usage,
)
from .scheduler import Job


class Reply:
    """Builds the response bodies of one request."""

    def __init__(
        self, generator: Generator, model_name: str, body: Any, job: Job, chat: bool, prompt_tokens: int
    ):
        self.gen = generator
        self.model_name = model_name
        self.body = body
        self.job = job
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def usage(self, out: GenerationOutput) -> Usage:
        gen, stats, params = self.gen, out.stats, self.job.params
        L = gen.spec.block_length
        queued = (self.job.started or self.job.submitted) - self.job.submitted
        sdar = SdarUsage(
            threshold=params.get("threshold", 0.9),
            eb_threshold=params.get("eb_threshold", 0.35),
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
        model = self.model_name
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
        self,
        delta: str | None,
        finish_reason: str | None = None,
        *,
        role: bool = False,
        token_ids: list[int] | None = None,
        **extra: Any,
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
        if token_ids is not None:   # the last chunk's choice, as in a whole answer
            choice["token_ids"] = token_ids
        chunk = {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model_name,
            "choices": [choice],
            **extra,
        }
        return _sse(chunk)

    def _step(self, step: UnmaskingStep) -> str:
        tok = self.gen.tokenizer
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
                    yield self._chunk(None, value.finish_reason, token_ids=self._token_ids(value))
                    options = self.body.stream_options
                    if options is not None and options.include_usage:
                        usage = self.usage(value).model_dump(mode="json")
                        yield _sse(
                            {
                                "id": self.id,
                                "object": "chat.completion.chunk" if self.chat else "text_completion",
                                "created": self.created,
                                "model": self.model_name,
                                "choices": [],
                                "usage": usage,
                            }
                        )
                    break
                event = await anext(events)
            yield "data: [DONE]\n\n"
        except ClientGone:
            return
        finally:
            await events.aclose()


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
