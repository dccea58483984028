"""The server's OpenAPI schema, generated from the very models it validates requests with and answers
with (sdar_rt.serve.protocol), so fuzzers, client generators and the ``/docs`` page see what the
server accepts:

* the request bodies of /v1/chat/completions and /v1/completions, with this server's own limits
  (the served model id, ``denoising_steps`` up to the block length, token ids below the vocabulary
  size, ``show_unmasking`` only with ``stream``);
* the 200 reply as JSON or, with ``stream``, as server-sent events (``text/event-stream``);
* every error status a route answers, with OpenAI's error body; none it never answers (FastAPI's
  own 422 is not one: the server reads bodies itself and answers 400).

What no JSON Schema can say is the context length: a prompt and its ``max_tokens`` must fit
``max_context`` tokens, counted after tokenization (400 ``context_length_exceeded`` otherwise).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .protocol import ChatCompletionRequest, CompletionRequest, ErrorResponse

COMPLETIONS = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}
_ERRORS = {
    "400": "the body is not JSON, a field is of the wrong type or out of range, an option is not "
           "supported, or the prompt and max_tokens do not fit the context",
    "401": "missing or incorrect API key (sdar-serve --api-key)",
    "403": "a request from a web page whose origin is not allowed (sdar-serve --allow-origin)",
    "404": "no such model, or no such path",
    "413": "the body is larger than the server's limit (sdar-serve --max-body-bytes)",
    "415": "the body is not sent as application/json",
    "429": "the queue is full; retry after the Retry-After seconds",
    "500": "the generation failed",
    "503": "the server is shutting down",
}
# One server-sent event: its `data` a chunk's JSON (one per finished block; with show_unmasking also one per
# denoising step; the usage chunk when asked), the last event's `data` the text [DONE].
_STREAM = {"schema": {"type": "object", "required": ["data"], "properties": {
    "event": {"type": "string"}, "data": {"type": "string"}, "id": {"type": "string"}},
    "description": "server-sent events: `data: <chunk JSON>`, one per finished block, then `data: [DONE]`"}}


def build_schema(app, *, model_name: str, block_length: int, vocab_size: int,
                 api_key: bool) -> dict[str, Any]:
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description,
                         routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)

    def ref(model: type[BaseModel]) -> dict[str, str]:
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(js.pop("$defs", {}))
        components[model.__name__] = js
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error = {"application/json": {"schema": ref(ErrorResponse)}}
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            responses = op["responses"]
            responses.pop("422", None)
            codes = ["403", "500"] + (["401"] if api_key and path.startswith("/v1/") else [])
            if path.startswith("/v1/models/"):
                codes.append("404")
            if method == "post":
                codes += ["400", "404", "413", "415", "429", "503"]
                body = {"application/json": {"schema": ref(COMPLETIONS[path])}}
                op["requestBody"] = {"required": True, "content": body}
                responses["200"]["content"]["text/event-stream"] = _STREAM
            for code in sorted(set(codes)):
                responses[code] = {"description": _ERRORS[code], "content": error}
                if code == "429":
                    retry = {"schema": {"type": "integer"}, "required": True}
                    responses[code]["headers"] = {"Retry-After": retry}
            if api_key and path.startswith("/v1/"):
                op["security"] = [{"bearer": []}]
    if api_key:
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for name in ("ChatCompletionRequest", "CompletionRequest"):
        _limits(components[name], model_name, block_length, vocab_size)
    return schema


def _limits(request: dict[str, Any], model_name: str, block_length: int, vocab_size: int) -> None:
    """This server's values in a request schema (see the module docstring)."""
    props = request["properties"]
    props["model"] = {"type": "string", "enum": [model_name], "title": "Model"}
    props["denoising_steps"]["anyOf"][0]["maximum"] = block_length
    if "prompt" in props:
        for form in props["prompt"]["anyOf"]:
            items = form.get("items", {})
            ids = items.get("items", items)
            if ids.get("type") == "integer":
                ids["maximum"] = vocab_size - 1
    request.setdefault("allOf", []).append({
        "if": {"properties": {"show_unmasking": {"const": True}}, "required": ["show_unmasking"]},
        "then": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
    })
