"""The OpenAI-compatible request schema of `fineflow serve`, its limits and its error shape."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fineflow.config import FineflowConfig, ServeConfig


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


class _Checked(BaseModel):
    # An OpenAI field this server does not implement (tools, logprobs, response_format, ...) is refused,
    # naming it: ignoring it would answer a different question than the one asked (a client asking for a
    # tool call gets prose). The fields it does use are checked strictly ("5" is not a number).
    model_config = ConfigDict(extra="forbid", strict=True)


# Accepted and ignored: they label the request for the caller's own bookkeeping and cannot change the
# answer.
IGNORED_FIELDS = ("user", "metadata", "store")
# Accepted only with the value that means "the feature is off", which is what this server does; any other
# value is refused like an unsupported field (clients such as LangChain send these defaults explicitly).
NO_OP_VALUES: dict[str, tuple] = {
    "n": (1,),
    "logprobs": (False,),
    "presence_penalty": (0,),
    "frequency_penalty": (0,),
}


class TextPart(_Checked):
    type: Literal["text"]
    text: str


class ChatMessage(_Checked):
    # `developer` is what newer OpenAI clients send in place of `system` (for their reasoning models)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def chat_role(self) -> str:
        """The role the chat template knows: a developer message is the system prompt."""
        return "system" if self.role == "developer" else self.role


class StreamOptions(_Checked):
    include_usage: bool = False


class JsonSchemaSpec(_Checked):
    """`response_format.json_schema`: OpenAI's named schema. `strict` is accepted either way: the answer is
    decoded under the schema (the engine's constrained decoder), which is what strict asks for."""

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")  # OpenAI's rule for the name
    description: str | None = None
    json_schema: dict[str, Any] = Field(alias="schema")  # `schema` would shadow pydantic's own attribute
    strict: bool | None = None


class ResponseFormat(_Checked):
    """`response_format`: `text` (the default: free text), `json_object` (any JSON object) or `json_schema`
    (JSON of the given schema)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_iff_json_schema(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only with it")
        return self

    def decoding_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer is decoded under, or None for free text."""
        if self.type == "json_object":
            return {"type": "object"}
        return self.json_schema.json_schema if self.json_schema is not None else None


class ChatRequest(_Checked):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # OpenAI's newer name for max_tokens
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    n: Literal[1] | None = None  # one choice per request
    logprobs: Literal[False] | None = None
    presence_penalty: float | None = None  # 0 only (NO_OP_VALUES)
    frequency_penalty: float | None = None  # 0 only (NO_OP_VALUES)
    user: str | None = None  # IGNORED_FIELDS
    metadata: dict[str, str] | None = None
    store: bool | None = None

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


def parse_chat_request(body: bytes, settings: ServeConfig) -> ChatRequest:
    """The request, checked: valid JSON of valid Unicode, only supported fields, and stop sequences within
    `settings`' limits. Everything here is cheap and runs before the request is queued."""
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", None, "invalid_json") from None
    except RecursionError:  # thousands of nested brackets: the decoder gives up, the request is bad
        raise APIError(400, "request body is nested too deeply", None, "invalid_json") from None
    if not isinstance(raw, dict):
        raise APIError(400, "request body must be a JSON object", None, "invalid_type")
    _check_unicode(raw)
    for name, allowed in NO_OP_VALUES.items():
        value = raw.get(name)
        if value is not None and not _is_no_op(value, allowed):
            raise APIError(
                400,
                f"{name}={json.dumps(value)[:40]} is not supported by this server (only "
                f"{' or '.join(json.dumps(a) for a in allowed)})",
                name,
                "unsupported_parameter",
            )
    _check_content_parts(raw)
    try:
        chat = ChatRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise APIError(
                400, f"{where}: not supported by this server", where, "unsupported_parameter"
            ) from None
        # the message only: pydantic's `input` would echo request content into the error (and its log)
        raise APIError(400, f"{where}: {first['msg']}", where, "invalid_value") from None
    check_stop(chat, settings)
    check_response_format(chat)
    return chat


def _is_no_op(value, allowed: tuple) -> bool:
    # 0 == 0.0 is the same setting, but False == 0 is not (a boolean is not a penalty)
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def _check_content_parts(raw: dict) -> None:
    """Content given as parts may hold text parts only: an image, audio or file part is refused naming its
    type (a text model would answer as if it had not been sent). Malformed messages are left to the
    schema, which names what is wrong with them."""
    messages = raw.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        parts = message.get("content") if isinstance(message, dict) else None
        for j, part in enumerate(parts if isinstance(parts, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind != "text":
                where = f"messages.{i}.content.{j}.type"
                raise APIError(
                    400,
                    f"{where}: content part type {kind[:40]!r} is not supported by this server (text only)",
                    where,
                    "unsupported_content_part",
                )


def check_response_format(chat: ChatRequest) -> None:
    """A `json_schema` response format must hold a valid JSON Schema that the constrained decoder can
    follow; checked here, before the request queues, so a bad schema is a 400 naming it, not a 500 once
    the model is busy with it."""
    from fineflow.models.constrained import UnsupportedSchemaError, check_schema

    schema = chat.response_format.decoding_schema() if chat.response_format else None
    if schema is None:
        return
    try:
        check_schema(schema)
    except UnsupportedSchemaError as exc:
        where = "response_format.json_schema.schema"
        raise APIError(400, f"{where}: {exc}", where, "invalid_value") from None


def _check_unicode(raw: dict) -> None:
    """JSON may escape a lone surrogate ("\\ud800"), which decodes to a str that no UTF-8 encoder accepts:
    the tokenizer and the traffic spool would fail on it later, as a 500. Walked without recursion: the
    decoder accepts nesting deeper than Python's recursion limit."""
    stack: list = [raw]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise APIError(
                    400,
                    "request body holds a lone UTF-16 surrogate (\\ud800-\\udfff) in a string: not valid "
                    "Unicode",
                    None,
                    "invalid_json",
                ) from None


def check_stop(chat: ChatRequest, settings: ServeConfig) -> None:
    """OpenAI's limit of stop sequences, and a bound on each one's length: the stopping criteria cost
    time and memory in proportion to the stop strings' length times the vocabulary, so an unbounded
    stop would let one request hold the model for a minute."""
    stops = [chat.stop] if isinstance(chat.stop, str) else (chat.stop or [])
    if len(stops) > settings.max_stop_sequences:
        raise APIError(
            400,
            f"stop: at most {settings.max_stop_sequences} stop sequences are accepted, got {len(stops)}",
            "stop",
            "invalid_value",
        )
    for index, stop in enumerate(stops):
        if len(stop) > settings.max_stop_chars:
            raise APIError(
                400,
                f"stop: sequence {index} has {len(stop)} characters; this server accepts at most "
                f"{settings.max_stop_chars}",
                "stop",
                "invalid_value",
            )


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
