"""Request and response bodies of the OpenAI-compatible endpoints (pydantic).

Requests are validated strictly (a string is not a number, a number is not a bool; an integral
number written as a float, ``16.0``, is an integer, as JSON Schema counts it); fields the server
does not know are ignored, as OpenAI clients send many. The SDAR decoding knobs are extra request
fields: ``threshold``, ``eb_threshold``, ``denoising_steps``, ``remasking``, ``fused_commit``, plus ``top_k``,
``show_unmasking`` (stream the denoising steps) and ``return_token_ids``.

Options the server refuses with a message of its own (``n`` > 1, penalties, tools, ...) keep a
lenient type here and say in their JSON schema (``json_schema_extra``) the one value accepted, so
the published OpenAPI schema describes exactly what a request may hold (sdar_rt.serve.openapi).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..generator import REMASKING_POLICIES

Remasking = Literal["sequential", "low_confidence_static", "low_confidence_dynamic", "entropy_bounded"]
assert set(get_args(Remasking)) == set(REMASKING_POLICIES)

MAX_STOP = 16


def _integral(value: Any) -> Any:
    """16.0 -> 16 (a JSON number with no fraction is an integer); anything else is left to the
    strict int check (so 16.5, "16" and true are still refused)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def json_int(**constraints: Any) -> Any:
    """An int field that also takes an integral float; ``constraints`` are Field's (ge, le, ...). The
    constraints sit on the int itself, so the JSON schema says minimum / maximum."""
    return Annotated[Annotated[int, Field(**constraints)], BeforeValidator(_integral)]


JsonInt = json_int()


def _only(value: Any) -> dict[str, Any]:
    """JSON schema of an option whose only accepted value is ``value`` (the server refuses others)."""
    return {"json_schema_extra": {"const": value}}


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _GenerationFields(_Body):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str
    max_tokens: json_int(ge=1) | None = None
    temperature: Annotated[float, Field(ge=0)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: json_int(ge=0) | None = None
    seed: json_int(ge=0, lt=2**64) | None = None
    stop: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=MAX_STOP)]
        | None
    ) = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: json_int(ge=1, json_schema_extra={"maximum": 1}) = 1
    presence_penalty: Annotated[float, Field(**_only(0))] | None = None
    frequency_penalty: Annotated[float, Field(**_only(0))] | None = None
    logit_bias: Annotated[dict[str, float], Field(json_schema_extra={"maxProperties": 0})] | None = None
    user: str | None = None
    # SDAR decoding
    threshold: Annotated[float, Field(gt=0, le=1)] | None = None
    eb_threshold: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None  # entropy_bounded's budget
    denoising_steps: json_int(ge=1) | None = None
    remasking: Remasking | None = None
    fused_commit: bool | None = None
    show_unmasking: bool = False
    return_token_ids: bool = False


class TextPart(_Body):
    """A content part; only text parts are served (others are refused with a message saying so)."""

    model_config = ConfigDict(strict=True, extra="ignore", json_schema_extra=lambda schema, _: schema.update(
        required=["type", "text"], properties={"type": {"const": "text"}, "text": {"type": "string"}}))

    type: str
    text: str | None = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_GenerationFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: json_int(ge=1) | None = None
    logprobs: Annotated[bool, Field(**_only(False))] | None = None
    top_logprobs: JsonInt | None = None
    tools: Annotated[list[dict[str, Any]], Field(json_schema_extra={"maxItems": 0})] | None = None
    response_format: (
        Annotated[dict[str, Any], Field(json_schema_extra={"const": {"type": "text"}})] | None
    ) = None


TokenIds = Annotated[list[json_int(ge=0)], Field(min_length=1)]
_ONE_PROMPT = {"minItems": 1, "maxItems": 1}   # a list of prompts holds one (batching is the server's)


class CompletionRequest(_GenerationFields):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | TokenIds
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(json_schema_extra=_ONE_PROMPT)]
        | Annotated[list[TokenIds], Field(json_schema_extra=_ONE_PROMPT)]
    )
    echo: Annotated[bool, Field(**_only(False))] | None = None
    logprobs: json_int(**_only(0)) | None = None
    suffix: Annotated[str, Field(json_schema_extra={"maxLength": 0})] | None = None
    best_of: json_int(**_only(1)) | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body: every status other than 200."""

    error: ErrorDetail


# ---------------------------------------------------------------------------- responses


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt positions whose K/V were already in the cache


class SdarUsage(BaseModel):
    """How the SDAR decoder ran this request."""

    threshold: float
    eb_threshold: float
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
