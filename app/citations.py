"""Citation markers in a generated answer: keep those that point at a passage, renumber, drop the rest.

Works on a stream: text is released as soon as it cannot be part of a marker, so the caller sees tokens
without delay, and markers such as `[2]`, `[2, 3]` or `[2][3]` are rewritten whole. Cited passages are
numbered by first appearance, so the answer's [1] is the first entry of the citation list.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from app.prompt import Passage
from retrieval.compress import split_sentences, unit_vectors

_MARKER = re.compile(r"\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")
_MAX_MARKER = 24  # longer than any marker we accept: a '[' this far back is plain text


class CitationFilter:
    """Feed generated text in pieces; get back text whose markers all point at cited passages."""

    def __init__(self, passages: list[Passage]) -> None:
        self._by_number = {p.number: p for p in passages}
        self._order: list[int] = []  # prompt numbers, in order of first citation
        self._pending = ""

    @property
    def cited(self) -> list[Passage]:
        """The passages the answer cites, in the order of their new numbers."""
        return [self._by_number[n] for n in self._order]

    def _renumber(self, match: re.Match[str]) -> str:
        numbers = [int(n) for n in re.split(r"\s*[,;]\s*", match.group(1))]
        out: list[str] = []
        for n in numbers:
            if n not in self._by_number:
                continue  # points nowhere: removed
            if n not in self._order:
                self._order.append(n)
            marker = f"[{self._order.index(n) + 1}]"
            if marker not in out:
                out.append(marker)
        return "".join(out)

    def _rewrite(self, text: str) -> str:
        text = _MARKER.sub(self._renumber, text)
        # A dropped marker leaves a space before punctuation ("fact [9].") or a double space.
        return re.sub(r" +([.,;:!?])", r"\1", re.sub(r"  +", " ", text)) if text else text

    def feed(self, piece: str) -> str:
        """Add generated text; return what can be released now."""
        self._pending += piece
        cut = self._pending.rfind("[")
        if cut == -1 or "]" in self._pending[cut:] or len(self._pending) - cut > _MAX_MARKER:
            cut = len(self._pending)
        # Hold back a trailing space too: the marker it precedes may be dropped.
        while cut > 0 and self._pending[cut - 1] == " ":
            cut -= 1
        release, self._pending = self._pending[:cut], self._pending[cut:]
        return self._rewrite(release)

    def flush(self) -> str:
        """Release whatever is held back (the stream ended)."""
        release, self._pending = self._pending, ""
        return self._rewrite(release).rstrip() if release.strip() else ""


def resolve(text: str, passages: list[Passage]) -> tuple[str, list[Passage]]:
    """A whole answer at once: (text with valid, renumbered markers, cited passages in order)."""
    f = CitationFilter(passages)
    out = f.feed(text) + f.flush()
    return out.strip(), f.cited


def attribute(
    text: str, passages: list[Passage], embed: Callable[[list[str]], np.ndarray], min_similarity: float
) -> tuple[str, list[Passage]]:
    """Citations for an answer whose model cited nothing (small models rarely do): each sentence gets the
    passage closest to it by embedding cosine, when at least `min_similarity`; numbered by first use.

    The same idea as RAGFlow's citation insertion. A sentence close to no passage stays uncited.
    """
    sentences = split_sentences(text)
    if not sentences or not passages:
        return text, []
    sims = _similarities([s.text for s in sentences], passages, embed)
    order: list[int] = []
    out, cursor = [], 0
    for i, span in enumerate(sentences):
        best = int(np.argmax(sims[i]))
        out.append(text[cursor : span.end])
        cursor = span.end
        if float(sims[i, best]) >= min_similarity:
            if best not in order:
                order.append(best)
            end = out[-1].rstrip()
            # the marker goes before the sentence's final punctuation mark, as a model would write it
            if end and end[-1] in ".!?":
                out[-1] = f"{end[:-1]} [{order.index(best) + 1}]{end[-1]}"
            else:
                out[-1] = f"{end} [{order.index(best) + 1}]"
    out.append(text[cursor:])
    return "".join(out), [passages[j] for j in order]


def _similarities(
    sentences: list[str], passages: list[Passage], embed: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """Cosine of every sentence (rows) to every passage (columns)."""
    vectors = unit_vectors(np.asarray(embed(sentences + [p.text for p in passages]), dtype=np.float32))
    return vectors[: len(sentences)] @ vectors[len(sentences) :].T


def grounded_share(
    text: str, passages: list[Passage], embed: Callable[[list[str]], np.ndarray], min_similarity: float
) -> float:
    """The share of an answer's sentences that some passage supports (cosine at least `min_similarity`)."""
    sentences = [s.text for s in split_sentences(text)]
    if not sentences or not passages:
        return 0.0
    best = _similarities(sentences, passages, embed).max(axis=1)
    return float(np.mean(best >= min_similarity))
