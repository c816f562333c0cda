"""HTTP client the CLI uses when a `kb serve` is running (it owns the index then)."""

from __future__ import annotations

from typing import Any

import httpx

from app.settings import Settings


class ClientError(Exception):
    """The server answered with an error; the message is the server's."""


def server_running(settings: Settings) -> bool:
    try:
        return httpx.get(f"{settings.server_url}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


class KbClient:
    def __init__(self, settings: Settings, groups: list[str] | None = None) -> None:
        key = settings.api_key
        if not key and settings.admin_key_file.exists():
            key = settings.admin_key_file.read_text().strip()
        if not key:
            raise ClientError("a server is running but no API key is set: export KB_API_KEY=<key>")
        headers = {"Authorization": f"Bearer {key}"}
        if groups is not None:
            headers["X-KB-Groups"] = ",".join(groups)
        self.http = httpx.Client(base_url=settings.server_url, headers=headers, timeout=120)

    def call(self, method: str, path: str, json: Any = None) -> Any:
        resp = self.http.request(method, path, json=json)
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise ClientError(f"{resp.status_code} {err['code']}: {err['message']}")
            except (ValueError, KeyError, TypeError):
                raise ClientError(f"{resp.status_code}: {resp.text[:300]}") from None
        return resp.json()
