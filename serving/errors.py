"""One error envelope (OpenAI's) and one place that maps exceptions to HTTP status codes."""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.engine import ContextLengthError
from serving.protocol import ErrorInfo, ErrorResponse

log = logging.getLogger(__name__)


class APIError(Exception):
    """An error to return to the client as ``status`` with OpenAI's error envelope."""

    def __init__(self, status: int, message: str, type_: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.info = ErrorInfo(message=message, type=type_, param=param, code=code)


def error_body(info: ErrorInfo) -> dict:
    """The JSON body of an error (also sent as the payload of an SSE error frame)."""
    return ErrorResponse(error=info).model_dump()


def _response(status: int, info: ErrorInfo) -> JSONResponse:
    return JSONResponse(error_body(info), status_code=status)


def _field(loc: tuple) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0]
    if first.get("type") == "json_invalid":
        return _response(400, ErrorInfo(message=f"Malformed JSON body: {first.get('msg')}",
                                        type="invalid_request_error", code="invalid_json"))
    details = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errors)
    return _response(422, ErrorInfo(message=details, type="invalid_request_error", param=_field(first["loc"]),
                                    code="invalid_value"))


async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return _response(exc.status, exc.info)


async def _context_length(_: Request, exc: ContextLengthError) -> JSONResponse:
    return _response(400, ErrorInfo(message=str(exc), type="invalid_request_error", param="messages",
                                    code="context_length_exceeded"))


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
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
