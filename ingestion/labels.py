"""A document's labels: who may read it (ACL) and its tags, as its source and front matter give them and as an
admin's overrides (kept in SQL) replace them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ingestion.catalog import CatalogError, validate_tags
from ingestion.loaders import LoadError
from ingestion.models import Document
from retrieval.types import PUBLIC_GROUP


@dataclass(frozen=True)
class Labels:
    """Who may read a document and how it is tagged."""

    acl: list[str]
    tags: list[str]


@dataclass(frozen=True)
class Overrides:
    """An admin's labels for a document (None: not overridden), kept in SQL across re-indexes."""

    acl: list[str] | None = None
    tags: list[str] | None = None

    @classmethod
    def of(cls, row: Document | None) -> Overrides:
        return cls(row.acl_override, row.tags_override) if row is not None else cls()

    def apply(self, computed: Labels) -> Labels:
        """What the index holds: each override replaces what the source and front matter give."""
        return Labels(
            sorted(self.acl) if self.acl is not None else computed.acl,
            sorted(self.tags) if self.tags is not None else computed.tags,
        )


def effective_acl(source_acl: list[str], narrowed: list[str] | None) -> list[str]:
    """A document may narrow its source's groups; it can never widen them."""
    if not narrowed:
        return sorted(set(source_acl))
    if PUBLIC_GROUP in source_acl:
        return sorted(set(narrowed))
    allowed = sorted(set(narrowed) & set(source_acl))
    if not allowed:
        raise LoadError(f"front matter acl {narrowed} shares no group with the source's acl {source_acl}")
    return allowed


def front_matter_tags(value: Any) -> list[str]:
    """`tags: [a, b]` or `tags: a, b` in front matter; raises LoadError naming what a tag may hold."""
    if value is None:
        return []
    raw = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    try:
        return validate_tags(raw)
    except CatalogError as exc:
        raise LoadError(f"front matter tags: {exc}") from exc
