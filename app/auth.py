"""API keys: created once and shown once, stored as sha256, resolved to a Principal per request."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import ApiKey
from ingestion.catalog import validate_acl
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


def create_key(db: Session, name: str, groups: list[str], admin: bool = False) -> NewKey:
    groups = validate_acl(groups) if groups else []
    scopes = ["read", "admin"] if admin else ["read"]
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
