"""The one BM25 tokenizer, shared by the index (what Qdrant scores) and the rank-bm25 reference."""

from __future__ import annotations

import re

# Qdrant's default word tokenizer: split on anything that is not a letter or digit, lowercase.
# Chunks are stored pre-tokenised with it, so the engine and the reference score the same tokens.
_WORD = re.compile(r"[^\W_]+")


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens, as Qdrant's default text index produces them."""
    return [token.lower() for token in _WORD.findall(text)]


def bm25_field_text(text: str) -> str:
    """The value stored in the BM25-indexed payload field: the tokens joined by single spaces."""
    return " ".join(tokenize(text))


def query_terms(text: str) -> list[str]:
    """Distinct query terms in order of first appearance (Qdrant counts a repeated term once)."""
    return list(dict.fromkeys(tokenize(text)))
