"""The chat page: one HTML file and its script, served as they are (no front-end build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/chat")


@router.get("/chat")
async def chat_page() -> FileResponse:
    return FileResponse(WEB_DIR / "chat.html", media_type="text/html", headers={"Cache-Control": "no-cache"})
