"""Serving's exception handlers: OpenAI's error envelope for every error (proto/http.py), plus the engine's
refusals of a request the client must change.

A prompt (plus the completion budget) longer than the context is 400 ``context_length_exceeded`` on
``messages``; a request vLLM refuses for another reason is 400 ``invalid_value`` naming the field.
"""

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from proto.http import ErrorInfo, error_response, install_error_handlers
from serving.engine import ContextLengthError, RequestRejected


async def _context_length(_: Request, exc: ContextLengthError) -> JSONResponse:
    return error_response(400, ErrorInfo(message=str(exc), type="invalid_request_error", param="messages",
                                         code="context_length_exceeded"))


async def _rejected(_: Request, exc: RequestRejected) -> JSONResponse:
    return error_response(400, ErrorInfo(message=str(exc), type="invalid_request_error", param=exc.param,
                                         code="invalid_value"))


def install(app: FastAPI) -> None:
    """Register the exception handlers on ``app``."""
    install_error_handlers(app)
    app.add_exception_handler(ContextLengthError, _context_length)
    app.add_exception_handler(RequestRejected, _rejected)
