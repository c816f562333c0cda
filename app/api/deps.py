"""Request dependencies: the container, and the principal behind the API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from app.api.errors import ApiError
from app.auth import resolve_key
from app.container import Container
from retrieval.types import Principal


def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


def get_principal(
    container: ContainerDep,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
    x_kb_groups: Annotated[str | None, Header()] = None,
) -> Principal:
    """Resolve `Authorization: Bearer <key>` (or `X-API-Key`); admins may act as other groups (`X-KB-Groups`)."""
    key = x_api_key
    if authorization and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    if not key:
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer <key>' (kb keys create)",
            {"WWW-Authenticate": "Bearer"},
        )
    with container.sessions() as db:
        principal = resolve_key(db, key)
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", {"WWW-Authenticate": "Bearer"})
    if x_kb_groups is not None:
        if "admin" not in principal.scopes:
            raise ApiError(403, "forbidden", "only admin keys may act as other groups (X-KB-Groups)")
        groups = tuple(sorted({g.strip() for g in x_kb_groups.split(",") if g.strip()}))
        name = f"{principal.name} as {','.join(groups) or 'public'}"
        return Principal(name=name, groups=groups, scopes=("read",), key_id=principal.key_id)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require_admin(principal: PrincipalDep) -> Principal:
    if "admin" not in principal.scopes:
        raise ApiError(403, "forbidden", "this route needs an admin key (kb keys create NAME --admin)")
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
