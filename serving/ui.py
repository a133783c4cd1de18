"""The chat page at ``/``: static files that talk to the public API only (no server-side rendering)."""

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def chat_page() -> FileResponse:
    return FileResponse(STATIC / "index.html")


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its script and stylesheet under ``/static/``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
