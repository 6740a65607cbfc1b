"""The OpenAI-compatible request schema of `fineflow serve`, its limits and its error shape."""

from __future__ import annotations

import json
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fineflow.config import FineflowConfig


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        if self.status == 401:
            return "authentication_error"
        return "invalid_request_error" if self.status < 500 else "server_error"

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self, request_id: str) -> JSONResponse:
        return JSONResponse(
            self.body(), status_code=self.status, headers={"x-request-id": request_id, **self.headers}
        )


class _Lenient(BaseModel):
    # Fields OpenAI clients send that this server does not use (user, seed, ...) are ignored; the fields it
    # does use are checked strictly ("5" is not a number).
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class ChatMessage(_Lenient):
    # `developer` is what newer OpenAI clients send in place of `system` (for their reasoning models)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def chat_role(self) -> str:
        """The role the chat template knows: a developer message is the system prompt."""
        return "system" if self.role == "developer" else self.role


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # OpenAI's newer name for max_tokens
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    n: Literal[1] | None = None  # one choice per request

    def chat(self) -> list[dict[str, str]]:
        return [{"role": m.chat_role(), "content": m.text()} for m in self.messages]

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return [s for s in stops if s]


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(
            413, f"request body of {declared} bytes exceeds the limit of {limit}", None, "too_large"
        )
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise APIError(413, f"request body exceeds the limit of {limit} bytes", None, "too_large")
    return bytes(body)


def parse_chat_request(body: bytes) -> ChatRequest:
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", None, "invalid_json") from None
    except RecursionError:  # thousands of nested brackets: the decoder gives up, the request is bad
        raise APIError(400, "request body is nested too deeply", None, "invalid_json") from None
    if not isinstance(raw, dict):
        raise APIError(400, "request body must be a JSON object", None, "invalid_type")
    try:
        return ChatRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        # the message only: pydantic's `input` would echo request content into the error (and its log)
        raise APIError(400, f"{where}: {first['msg']}", where, "invalid_value") from None


def completion_limit(request: ChatRequest, config: FineflowConfig) -> int:
    limits = config.serve.max_new_tokens
    asked = request.max_completion_tokens or request.max_tokens
    if asked is None:
        return limits.default
    if asked > limits.cap:
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise APIError(
            400, f"{param} {asked} exceeds this server's limit of {limits.cap}", param, "invalid_value"
        )
    return asked
