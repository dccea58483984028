"""Request and response bodies of the OpenAI-compatible endpoints (pydantic).

Requests are validated strictly (a string is not a number, a number is not a bool); fields the
server does not know are ignored, as OpenAI clients send many. The SDAR decoding knobs are extra
request fields: ``threshold``, ``denoising_steps``, ``remasking``, ``fused_commit``, plus ``top_k``,
``show_unmasking`` (stream the denoising steps) and ``return_token_ids``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from ..generator import REMASKING_POLICIES

Remasking = Literal["sequential", "low_confidence_static", "low_confidence_dynamic"]
assert set(get_args(Remasking)) == set(REMASKING_POLICIES)

MAX_STOP = 16


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _GenerationFields(_Body):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**64)] | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(ge=1)] = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # SDAR decoding
    threshold: Annotated[float, Field(gt=0, le=1)] | None = None
    denoising_steps: Annotated[int, Field(ge=1)] | None = None
    remasking: Remasking | None = None
    fused_commit: bool | None = None
    show_unmasking: bool = False
    return_token_ids: bool = False


class TextPart(_Body):
    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_GenerationFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_GenerationFields):
    prompt: (
        str | Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | list[str] | list[list[int]]
    )
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


# ---------------------------------------------------------------------------- responses


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt positions whose K/V were already in the cache


class SdarUsage(BaseModel):
    """How the SDAR decoder ran this request."""

    threshold: float
    denoising_steps: int
    remasking: str
    fused_commit: bool
    block_length: int
    blocks: int  # decoded blocks
    steps_per_block: list[int]
    nfe: int  # forward passes of the call: prefill + denoise + commit + fused
    nfe_prefill: int
    decode_forwards: int
    tpf: float  # output tokens per decode forward
    batch_rows: int  # requests decoded together in the call
    queue_seconds: float
    time_to_first_block: float
    generation_seconds: float


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    sdar: SdarUsage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: str
    logprobs: None = None
    token_ids: list[int] | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str
    logprobs: None = None
    token_ids: list[int] | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class UnmaskingState(BaseModel):
    """One denoising step of the block being decoded (streamed with ``show_unmasking``)."""

    block: int
    step: int
    position: int
    token_ids: list[int]
    tokens: list[str | None]  # each position's text; None where still masked
    masked: list[bool]
    prompt_positions: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "sdar_rt"
    max_context: int
    block_length: int
    batch: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
