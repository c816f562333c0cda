"""When Qdrant or the broker is down the API says 503 and which one, never a traceback."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from app.auth import create_key
from app.main import create_app
from app.settings import Settings


def test_qdrant_and_broker_down_are_503_with_the_component(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        qdrant_url="http://127.0.0.1:9",  # nothing listens on the discard port
        broker_url="redis://127.0.0.1:9/0",
        run_worker=False,
    )
    with TestClient(create_app(settings)) as client:
        container = client.app.state.container  # type: ignore[attr-defined]
        with container.sessions() as db:
            key = create_key(db, "ops", ["public"], admin=True).key
        auth = {"Authorization": f"Bearer {key}"}
        search = client.post("/v1/search", json={"query": "vacation"}, headers=auth)
        assert search.status_code == 503
        assert search.json()["error"]["code"] == "qdrant_unavailable"
        created = client.post("/v1/sources", json={"name": "docs", "path": str(tmp_path)}, headers=auth)
        assert created.status_code == 201
        reindex = client.post("/v1/sources/docs/reindex", headers=auth)
        assert reindex.status_code == 503
        assert reindex.json()["error"]["code"] == "broker_unavailable"
        ready = client.get("/readyz")
        assert ready.status_code == 503
        checks = ready.json()["checks"]
        assert checks["sql"] == "ok" and checks["qdrant"].startswith("down") and checks["broker"].startswith("down")
