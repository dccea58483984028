"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ApiError(Exception):
    """A request the server answers with an error body instead of a completion."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid_body(exc: ValidationError) -> ApiError:
    """400 for a body that is not JSON, or whose fields have the wrong type or value."""
    errors = exc.errors(include_url=False)
    if any(e["type"] == "json_invalid" for e in errors):
        reason = next(e for e in errors if e["type"] == "json_invalid").get("ctx", {}).get("error", "")
        return ApiError(400, f"the request body is not valid JSON ({reason})", code="invalid_json")
    first = errors[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    details = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return ApiError(400, f"invalid request: {details}{more}", param=param, code="invalid_value")


def from_generation(exc: BaseException) -> ApiError:
    """The status of an error raised by the Generator for a queued request."""
    from .. import _core

    if isinstance(exc, _core.ContextOverflowError):
        return ApiError(400, str(exc), param="max_tokens", code="context_length_exceeded")
    if isinstance(exc, ValueError):
        return ApiError(400, str(exc))
    return ApiError(500, f"generation failed: {exc}", type="server_error")
