"""API keys: created once and shown once, stored as sha256, resolved to a Principal per request."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey
from ingestion.catalog import CatalogError, validate_acl
from retrieval.types import Principal

KEY_PREFIX = "kb_"


@dataclass(frozen=True)
class NewKey:
    id: str
    name: str
    key: str  # shown once; only its hash is stored
    groups: list[str]
    scopes: list[str]


def _hash(key: str) -> str:
    # Keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


SCOPE = re.compile(r"^[a-z][a-z0-9_:-]{0,31}$")


def validate_scopes(scopes: list[str]) -> list[str]:
    """Scope names as a key stores them: lowercase words (`read`, `notes`, `approve`, `webhook`, `admin`)."""
    bad = [s for s in scopes if not SCOPE.match(s)]
    if bad:
        raise CatalogError("scopes", f"invalid scope names {bad}: use lowercase letters, digits, '_', ':' or '-'")
    return list(dict.fromkeys(scopes))


def create_key(
    db: Session, name: str, groups: list[str], admin: bool = False, scopes: list[str] | None = None
) -> NewKey:
    """A new key with `read`, any extra `scopes` (e.g. notes, approve, webhook) and, with `admin`, every scope."""
    groups = validate_acl(groups) if groups else []
    scopes = validate_scopes(["read", *(scopes or []), *(["admin"] if admin else [])])
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(id=uuid.uuid4().hex, name=name, key_hash=_hash(key), groups=groups, scopes=scopes)
    db.add(row)
    db.commit()
    return NewKey(row.id, name, key, groups, scopes)


def resolve_key(db: Session, key: str) -> Principal | None:
    row = db.scalar(select(ApiKey).where(ApiKey.key_hash == _hash(key), ApiKey.revoked.is_(False)))
    if row is None:
        return None
    return Principal(name=row.name, groups=tuple(row.groups), scopes=tuple(row.scopes), key_id=row.id)
