"""Split document text into chunks sized in the embedder's own tokens, so nothing is truncated."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class TextSpan:
    """A chunk's text and where it sits in the document (character offsets)."""

    text: str
    start_char: int
    end_char: int


class Chunker:
    """llama-index-core's SentenceSplitter, measuring length with the embedding model's tokenizer."""

    def __init__(self, count_tokens: Callable[[str], int], chunk_tokens: int = 200, overlap: int = 30) -> None:
        from llama_index.core.node_parser import SentenceSplitter

        if overlap >= chunk_tokens:
            raise ValueError(f"chunk overlap ({overlap}) must be smaller than the chunk size ({chunk_tokens})")
        self._count = count_tokens
        self._splitter = SentenceSplitter(
            chunk_size=chunk_tokens,
            chunk_overlap=overlap,
            # The splitter only needs the length of the token list; our counter is the model's tokenizer.
            tokenizer=lambda text: [0] * count_tokens(text),
            include_metadata=False,
            include_prev_next_rel=False,
        )

    def split(self, text: str) -> list[TextSpan]:
        from llama_index.core.schema import Document

        if not text.strip():
            return []
        nodes = self._splitter.get_nodes_from_documents([Document(text=text)])
        spans = []
        cursor = 0
        for node in nodes:
            body = node.get_content()
            start_idx: int | None = getattr(node, "start_char_idx", None)
            end_idx: int | None = getattr(node, "end_char_idx", None)
            start = max(start_idx if start_idx is not None else text.find(body, cursor), 0)
            end = end_idx if end_idx is not None else start + len(body)
            spans.append(TextSpan(text=body, start_char=start, end_char=end))
            cursor = start
        return spans
