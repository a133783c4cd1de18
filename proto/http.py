"""What every HTTP API of the project shares: how requests are validated, ``ChatMessage``, and OpenAI's error
envelope with the one set of FastAPI exception handlers that produces it.

Serving (``/v1/chat/completions``, ``/v1/feedback``, admin) and the reward service (``/v1/score``, see
:mod:`proto.score`) install the same handlers (:func:`install_error_handlers`), so every non-2xx answer of
either is ``{"error": {"message", "type", "param", "code"}}`` with the status codes the official ``openai``
client expects:

- 400 ``invalid_request_error`` for a request the client must change, naming the offending field in
  ``param`` as a dotted path (``messages.0.content.1.type``, ``inputs.0.response``) and saying what to
  change (``code``: ``invalid_type``, ``invalid_value``, ``missing_required_parameter``,
  ``unknown_parameter``, ``unsupported_parameter``, ``unsupported_value``, ``invalid_json``). FastAPI's 422
  never reaches a client: the ``openai`` client raises a different exception class for it than for
  OpenAI's own 400.
- any status a route raises as :class:`APIError` (401, 403, 404, 429 with ``Retry-After``, 503, ...);
  an unknown route or method keeps its status (404, 405) with type ``invalid_request_error``, as OpenAI's.
- 500 ``server_error`` for a fault of the server, without its internals.

Request models are strict (:class:`StrictModel`): a value of the wrong JSON type is refused, not converted
(``"5"`` is not a number), and a field the model does not declare is refused as unrecognised.
"""

import asyncio
import logging
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException

from proto import events_pb2

log = logging.getLogger(__name__)


# --- request models -----------------------------------------------------------------------------------

def _utf8(text: str) -> str:
    """Refuse strings that cannot be UTF-8 encoded (lone surrogates): tokenizers and the wire need UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode ({exc.reason} at index {exc.start})") from None
    return text


Text = Annotated[str, AfterValidator(_utf8)]


def refused(reason: str, *, unless: tuple = ()) -> Any:
    """A request field this server refuses (any value except ``null`` and those in ``unless``).

    The 400 names the field and gives ``reason`` (what is not supported and what to do instead).
    """

    def check(value: Any) -> Any:
        if value is None or any(value == ok for ok in unless):
            return value
        raise PydanticCustomError("unsupported_parameter", reason)

    return Annotated[Any, AfterValidator(check)]


def only(allowed: tuple, reason: str) -> AfterValidator:
    """Accept only the values in ``allowed`` of an otherwise valid field; refuse others with ``reason``."""

    def check(value: Any) -> Any:
        if value is None or value in allowed:
            return value
        raise PydanticCustomError("unsupported_value", reason)

    return AfterValidator(check)


class StrictModel(BaseModel):
    """Request models: wrong JSON types are errors, unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(StrictModel):
    """A content part; only text parts are supported (the models read text only)."""

    type: Annotated[str, only(("text",), "This model reads text only: content parts must have type 'text'.")]
    text: Text


_NO_TOOL_RESULTS = "This server offers no tool calls, so there are no tool results to send."


class ChatMessage(StrictModel):
    """One message of a conversation, as OpenAI's chat API sends it: what serving's chat completions take and
    what ``/v1/score`` scores after. ``developer`` is OpenAI's newer name for ``system`` and becomes it.

    The same message travels in events as ``events_pb2.ChatMessage`` (:meth:`to_proto`).
    """

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] = Field(description="A string, or a list of text parts (joined).")
    name: refused("This model's chat template has no participant names; put the name in the content.") = None

    @field_validator("role", mode="before")
    @classmethod
    def _known_role(cls, role: object) -> object:
        if role in ("tool", "function"):
            raise PydanticCustomError("unsupported_value", _NO_TOOL_RESULTS)
        return role

    @field_validator("role")
    @classmethod
    def _developer_is_system(cls, role: str) -> str:
        # OpenAI's newer name for system instructions; the chat template knows "system".
        return "system" if role == "developer" else role

    @property
    def text(self) -> str:
        """The content as one string (text parts joined)."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_turn(self) -> dict[str, str]:
        """``{"role", "content"}`` with the content as one string: what a chat template takes."""
        return {"role": self.role, "content": self.text}

    def to_proto(self) -> events_pb2.ChatMessage:
        """This message as events carry it (the content as one string)."""
        return events_pb2.ChatMessage(role=self.role, content=self.text)


# --- the error envelope -------------------------------------------------------------------------------

class ErrorInfo(BaseModel):
    """The inside of OpenAI's error envelope."""

    message: str = Field(description="What went wrong and what to change.")
    type: str = Field(description="invalid_request_error, authentication_error, permission_error, requests, "
                                  "server_error, ...")
    param: str | None = Field(None, description="The offending request field as a dotted path, if one is.")
    code: str | None = Field(None, description="A machine-readable reason (invalid_value, ...).")


class ErrorResponse(BaseModel):
    """``{"error": {...}}``: every non-2xx JSON answer of every service."""

    error: ErrorInfo


def error_body(info: ErrorInfo) -> dict:
    """The JSON body of an error (also sent as the payload of an SSE error frame)."""
    return ErrorResponse(error=info).model_dump()


class APIError(Exception):
    """An error to return to the client as ``status`` with OpenAI's error envelope."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(message=message, type=type_, param=param, code=code)
        self.headers = headers  # e.g. Retry-After of a 429


def error_response(status: int, info: ErrorInfo, headers: dict[str, str] | None = None) -> JSONResponse:
    """``info`` in the envelope as a response with ``status``."""
    return JSONResponse(error_body(info), status_code=status, headers=headers)


# --- validation errors in OpenAI's words --------------------------------------------------------------

def _param_path(loc: tuple, body: Any) -> str | None:
    """The dotted path of the field that ``loc`` (a pydantic error location) points at in ``body``.

    pydantic puts the names of union members and discriminator tags into ``loc`` (``content``,
    ``list[TextPart]``, ``1``, ``type``); the path keeps only the parts that exist in the request as sent,
    plus the last one (a missing field), so a client sees ``messages.0.content.1.type``.
    """
    parts = list(loc[1:] if loc and loc[0] in ("body", "header", "query", "path") else loc)
    kept, node = [], body
    for i, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            kept.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            kept.append(str(part))
            node = node[part]
        elif i == len(parts) - 1 and isinstance(part, (str, int)) and not _is_tag(part):
            kept.append(str(part))  # a missing field
    return ".".join(kept) or None


def _is_tag(part: object) -> bool:
    """Whether a location part is pydantic's name of a type (a union member), not a field."""
    return isinstance(part, str) and any(c in part for c in "[]()") or part in ("str", "int", "float", "bool")


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
               float: "a number", type(None): "null"}


def _describe(error: dict, body: Any) -> tuple[str | None, str, str]:
    """``(param, message, code)`` of one pydantic error on ``body``, in OpenAI's words where it has them."""
    param = _param_path(tuple(error["loc"]), body)
    kind, msg, value = error["type"], error["msg"], error.get("input")
    name = f"'{param}'" if param else "the request body"
    if kind == "missing":
        detail = "" if msg == "Field required" else f" {msg}"
        return param, f"Missing required parameter: {name}.{detail}", "missing_required_parameter"
    if kind == "extra_forbidden":
        return param, (f"Unrecognized request argument supplied: {name}. Remove it; the README lists the "
                       "fields this server supports."), "unknown_parameter"
    if kind in ("unsupported_parameter", "unsupported_value"):
        what = "parameter" if kind == "unsupported_parameter" else "value"
        return param, f"Unsupported {what}: {name}. {msg}", kind
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "is_instance_of":
        got = _TYPE_NAMES.get(type(value), type(value).__name__)
        return param, f"Invalid type for {name}: {_lower(msg)}, but got {got} instead.", "invalid_type"
    if kind == "invalid_value":  # raised by our validators: the message already says what is wrong
        return param, f"Invalid {name}: {msg}.", kind
    why = _lower(msg.removeprefix("Value error, "))
    return param, f"Invalid {name}: {why} (got {_short(value)}).", "invalid_value"


def _lower(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


def _most_specific(errors: list[dict], body: Any) -> dict:
    """The error to report: the first, or one deeper inside the same field.

    A value that fails every member of a union gets one error per member; the deepest names the part
    that is wrong (``messages.0.content.1.type``, not ``messages.0.content``).
    """
    first = errors[0]
    path = _param_path(tuple(first["loc"]), body) or ""
    deeper = [e for e in errors if (_param_path(tuple(e["loc"]), body) or "").startswith(path + ".")]
    # deepest first; at the same depth a wrong value before an extra field (``type: "image_url"`` is the
    # news, not the ``image_url`` that comes with it)
    return max(deeper, key=lambda e: (_param_path(tuple(e["loc"]), body).count("."),
                                      e["type"] != "extra_forbidden"), default=first)


def _is_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors, body = exc.errors(), exc.body
    first = errors[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error")
        return error_response(400, ErrorInfo(
            message=f"We could not parse the JSON body of your request ({reason}). Send a JSON object.",
            type="invalid_request_error", code="invalid_json"))
    if tuple(first["loc"]) == ("body",) and not isinstance(body, dict):
        why = ("'content-type' is not application/json" if not _is_json(request)
               else f"it is {_TYPE_NAMES.get(type(body), 'not an object')}")
        return error_response(400, ErrorInfo(
            message=f"The request body must be a JSON object sent as 'content-type: application/json'; "
                    f"{why}.", type="invalid_request_error", code="invalid_json"))
    param, message, code = _describe(_most_specific(errors, body), body)  # one at a time, as OpenAI does
    return error_response(400, ErrorInfo(message=message, type="invalid_request_error", param=param,
                                         code=code))


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.info, exc.headers)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:
        # FastAPI's own 400: a body its JSON decoder could not even start on (not UTF-8, nested too deep)
        info = ErrorInfo(message="The request body could not be parsed: send a JSON object encoded as UTF-8.",
                         type="invalid_request_error", code="invalid_json")
        return error_response(400, info)
    return error_response(exc.status_code, ErrorInfo(message=str(exc.detail), type="invalid_request_error"))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    info = ErrorInfo(message=f"Internal error: {type(exc).__name__}", type="server_error")
    return error_response(500, info)


class BodyLimitMiddleware:
    """Reads each request body whole, within ``max_bytes`` and ``timeout_s``, before the app sees it.

    A body over ``max_bytes`` gets 413 ``request_too_large`` (at once when its Content-Length says so,
    else when the bytes read pass it, chunked bodies too); one not received in ``timeout_s`` seconds
    gets 408 ``request_timeout``. Both close the connection. Without the bound a multi-megabyte body would
    be parsed on the event loop, stalling every client; without the deadline a client that stops sending
    would hold its connection (a file descriptor) forever.

    Args:
        app: the ASGI app to call with the body.
        max_bytes: largest body accepted (bytes).
        timeout_s: longest the client may take to send the body (s), from the end of its headers.
    """

    def __init__(self, app, max_bytes: int, timeout_s: float):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client left: the app sees it leave
                        break
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if size > self.max_bytes:
                        return await self._too_large(send)
                    if not message.get("more_body", False):
                        message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                        break
        except TimeoutError:
            return await self._refuse(
                send, 408, f"The request body did not arrive within {self.timeout_s:g} s: send the whole "
                "body at once, with a Content-Length that matches it.", "request_timeout")
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the client leaving, for streams
            replayed = True
            return message

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        await self._refuse(send, 413, f"Request body exceeds {self.max_bytes} bytes.", "request_too_large")

    @staticmethod
    async def _refuse(send, status: int, message: str, code: str) -> None:
        # the rest of the body is never read, so the connection cannot carry another request
        response = error_response(status, ErrorInfo(message=message, type="invalid_request_error", code=code),
                                  headers={"connection": "close"})
        await response({"type": "http"}, None, send)


def install_error_handlers(app: FastAPI) -> None:
    """Register on ``app`` the handlers that answer every error in the envelope (see the module docstring)."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
