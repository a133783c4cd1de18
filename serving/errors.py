"""One error envelope (OpenAI's) and the one place that maps every exception to an HTTP status code.

A caller without a valid API key gets 401, a vote without a valid feedback token or on another's response
403, a caller over a rate limit 429 with ``Retry-After``. A request the client must change gets 400
``invalid_request_error`` (413 when its body is too large, 404 for an unknown model) naming the offending
field in ``param`` as a dotted path (``messages.0.role``) and saying what to change; FastAPI's 422 never
reaches a client, because the official ``openai`` client raises a different exception class for it than for
OpenAI's own 400. 500 and 503 are ours: a fault of this server, or a dependency it cannot reach.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.engine import ContextLengthError, RequestRejected
from serving.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error to return to the client as ``status`` with OpenAI's error envelope."""

    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(message=message, type=type_, param=param, code=code)
        self.headers = headers  # e.g. Retry-After of a 429


def error_body(info: ErrorInfo) -> dict:
    """The JSON body of an error (also sent as the payload of an SSE error frame)."""
    return ErrorResponse(error=info).model_dump()


def _response(status: int, info: ErrorInfo, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(info), status_code=status, headers=headers)


def param_path(loc: tuple, body: Any) -> str | None:
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


def describe(error: dict, body: Any) -> tuple[str | None, str, str]:
    """``(param, message, code)`` of one pydantic error on ``body``, in OpenAI's words where it has them."""
    param = param_path(tuple(error["loc"]), body)
    kind, msg, value = error["type"], error["msg"], error.get("input")
    name = f"'{param}'" if param else "the request body"
    if kind == "missing":
        detail = "" if msg == "Field required" else f" {msg}"
        return param, f"Missing required parameter: {name}.{detail}", "missing_required_parameter"
    if kind == "extra_forbidden":
        return param, (f"Unrecognized request argument supplied: {name}. Remove it; the README lists the fields "
                       "this server supports."), "unknown_parameter"
    if kind in ("unsupported_parameter", "unsupported_value"):
        what = "parameter" if kind == "unsupported_parameter" else "value"
        return param, f"Unsupported {what}: {name}. {msg}", kind
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "is_instance_of":
        got = _TYPE_NAMES.get(type(value), type(value).__name__)
        return param, f"Invalid type for {name}: {_lower(msg)}, but got {got} instead.", "invalid_type"
    if kind == "invalid_value":  # ours (serving.protocol): the message already says what is wrong
        return param, f"Invalid {name}: {msg}.", kind
    return param, f"Invalid {name}: {_lower(msg.removeprefix('Value error, '))} (got {_short(value)}).", "invalid_value"


def _lower(msg: str) -> str:
    return msg[:1].lower() + msg[1:]


def most_specific(errors: list[dict], body: Any) -> dict:
    """The error to report: the first, or one deeper inside the same field.

    A value that fails every member of a union gets one error per member; the deepest names the part
    that is wrong (``messages.0.content.1.type``, not ``messages.0.content``).
    """
    first = errors[0]
    path = param_path(tuple(first["loc"]), body) or ""
    deeper = [e for e in errors if (param_path(tuple(e["loc"]), body) or "").startswith(path + ".")]
    # deepest first; at the same depth a wrong value before an extra field (``type: "image_url"`` is the
    # news, not the ``image_url`` that comes with it)
    return max(deeper, key=lambda e: (param_path(tuple(e["loc"]), body).count("."),
                                      e["type"] != "extra_forbidden"), default=first)


def _is_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors, body = exc.errors(), exc.body
    first = errors[0]
    if first.get("type") == "json_invalid":
        return _response(400, ErrorInfo(
            message=f"We could not parse the JSON body of your request ({first.get('ctx', {}).get('error')}). "
                    "Send a JSON object.", type="invalid_request_error", code="invalid_json"))
    if tuple(first["loc"]) == ("body",) and not isinstance(body, dict):
        why = ("'content-type' is not application/json" if not _is_json(request)
               else f"it is {_TYPE_NAMES.get(type(body), 'not an object')}")
        return _response(400, ErrorInfo(
            message=f"The request body must be a JSON object sent as 'content-type: application/json'; {why}.",
            type="invalid_request_error", code="invalid_json"))
    param, message, code = describe(most_specific(errors, body), body)  # one at a time, as OpenAI does
    return _response(400, ErrorInfo(message=message, type="invalid_request_error", param=param, code=code))


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return _response(exc.status, exc.info, exc.headers)


async def _context_length(_: Request, exc: ContextLengthError) -> JSONResponse:
    return _response(400, ErrorInfo(message=str(exc), type="invalid_request_error", param="messages",
                                    code="context_length_exceeded"))


async def _rejected(_: Request, exc: RequestRejected) -> JSONResponse:
    return _response(400, ErrorInfo(message=str(exc), type="invalid_request_error", param=exc.param,
                                    code="invalid_value"))


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _response(exc.status_code, ErrorInfo(message=str(exc.detail), type="invalid_request_error"))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return _response(500, ErrorInfo(message=f"Internal error: {type(exc).__name__}", type="internal_error"))


def install(app: FastAPI) -> None:
    """Register the exception handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(ContextLengthError, _context_length)
    app.add_exception_handler(RequestRejected, _rejected)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
