"""Conversations in SQL, per user: turns, their citations and outcome, and feedback on answers."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import asdict
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from app.models import Conversation, Feedback, Message
from ingestion.catalog import CatalogError, NotFound
from retrieval.types import Citation

HISTORY_TURNS = 6  # messages of history given to the model and to the query rewrite
_REFERRING = re.compile(
    r"\b(it|its|it's|that|this|these|those|they|them|their|there|he|she|him|her|one|ones|same|above|former|latter)\b",
    re.IGNORECASE,
)
_CONTINUATION = re.compile(r"^\s*(and|also|what about|how about|but|or|so|then|why|why not)\b", re.IGNORECASE)


def standalone_query(history: list[dict[str, str]], question: str) -> str:
    """The rule used without an LLM: a follow-up that leans on the previous turn (a pronoun, "what about…",
    or very short) is searched together with the previous question; anything else stands alone."""
    previous = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
    if not previous:
        return question
    words = question.split()
    if len(words) <= 3 or _REFERRING.search(question) or _CONTINUATION.match(question):
        return f"{previous} {question}"
    return question


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _title(question: str) -> str:
    text = " ".join(question.split())
    return text if len(text) <= 80 else text[:77].rstrip() + "…"


class ConversationStore:
    """Reads and writes one user's conversations; another user's conversation is reported as not found."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def _own(self, db: Session, owner: str, conversation_id: str) -> Conversation:
        conv = db.get(Conversation, conversation_id)
        if conv is None or conv.owner != owner:
            raise NotFound(f"conversation {conversation_id!r} not found")
        return conv

    def open(self, owner: str, conversation_id: str | None, question: str) -> str:
        """The conversation to add a turn to: the given one (checked to be the owner's) or a new one."""
        with self.sessions() as db:
            if conversation_id:
                return self._own(db, owner, conversation_id).id
            conv = Conversation(owner=owner, title=_title(question))
            db.add(conv)
            db.commit()
            return conv.id

    def history(self, conversation_id: str, turns: int = HISTORY_TURNS) -> list[dict[str, str]]:
        """The last turns for the model: user questions and finished answers, oldest first."""
        with self.sessions() as db:
            rows = db.scalars(
                select(Message)
                .where(Message.conversation_id == conversation_id, Message.status == "ok")
                .order_by(Message.seq.desc())
                .limit(turns)
            ).all()
        return [{"role": m.role, "content": m.content} for m in reversed(rows)]

    def _append(self, db: Session, conversation_id: str, **fields: Any) -> Message:
        seq = db.scalar(
            select(func.coalesce(func.max(Message.seq), 0)).where(Message.conversation_id == conversation_id)
        )
        msg = Message(conversation_id=conversation_id, seq=int(seq or 0) + 1, **fields)
        db.add(msg)
        conv = db.get(Conversation, conversation_id)
        if conv is not None:
            conv.updated_at = _now()
        db.commit()
        return msg

    def add_question(self, conversation_id: str, question: str, search_query: str) -> str:
        """Store the question first, so a failed generation never loses it."""
        with self.sessions() as db:
            return self._append(db, conversation_id, role="user", content=question, search_query=search_query).id

    def start_answer(self, conversation_id: str) -> str:
        with self.sessions() as db:
            return self._append(db, conversation_id, role="assistant", content="", status="pending").id

    def finish_answer(
        self, message_id: str, text: str, status: str, citations: list[Citation], meta: dict[str, Any]
    ) -> None:
        with self.sessions() as db:
            msg = db.get(Message, message_id)
            if msg is None:
                return
            msg.content, msg.status = text, status
            msg.citations = [asdict(c) for c in citations]
            msg.meta = meta
            db.commit()

    def list(self, owner: str, limit: int = 50) -> list[dict[str, Any]]:
        with self.sessions() as db:
            rows = db.scalars(
                select(Conversation)
                .where(Conversation.owner == owner)
                .order_by(Conversation.updated_at.desc())
                .limit(limit)
            ).all()
        return [_conversation_out(c) for c in rows]

    def get(self, owner: str, conversation_id: str) -> dict[str, Any]:
        with self.sessions() as db:
            conv = self._own(db, owner, conversation_id)
            messages = db.scalars(select(Message).where(Message.conversation_id == conv.id).order_by(Message.seq)).all()
            rated = select(Feedback.message_id, Feedback.rating).where(
                Feedback.owner == owner, Feedback.message_id.in_([m.id for m in messages])
            )
            ratings = {message_id: rating for message_id, rating in db.execute(rated).all()}
        return {**_conversation_out(conv), "messages": [_message_out(m, ratings.get(m.id)) for m in messages]}

    def delete(self, owner: str, conversation_id: str) -> None:
        with self.sessions() as db:
            conv = self._own(db, owner, conversation_id)
            turns = select(Message.id).where(Message.conversation_id == conv.id)
            db.execute(delete(Feedback).where(Feedback.message_id.in_(turns)))
            db.execute(delete(Message).where(Message.conversation_id == conv.id))
            db.execute(delete(Conversation).where(Conversation.id == conv.id))
            db.commit()

    def rate(self, owner: str, message_id: str, rating: int, comment: str = "") -> None:
        """Thumbs up (1) or down (-1) on one of the owner's answers; rating again replaces the earlier one."""
        if rating not in (1, -1):
            raise CatalogError("rating", "rating must be 1 (thumbs up) or -1 (thumbs down)")
        with self.sessions() as db:
            msg = db.get(Message, message_id)
            if msg is None or msg.role != "assistant":
                raise NotFound(f"answer {message_id!r} not found")
            self._own(db, owner, msg.conversation_id)
            row = db.get(Feedback, (message_id, owner))
            if row is None:
                db.add(Feedback(message_id=message_id, owner=owner, rating=rating, comment=comment))
            else:
                row.rating, row.comment, row.created_at = rating, comment, _now()
            db.commit()

    def feedback_counts(self) -> dict[str, int]:
        """Thumbs up and down over all users (for /metrics)."""
        with self.sessions() as db:
            counts = select(Feedback.rating, func.count()).group_by(Feedback.rating)
            rows = {rating: n for rating, n in db.execute(counts).all()}
        return {"up": int(rows.get(1, 0)), "down": int(rows.get(-1, 0))}


def _conversation_out(c: Conversation) -> dict[str, Any]:
    return {
        "id": c.id,
        "title": c.title,
        "created_at": c.created_at.isoformat() if c.created_at else None,
        "updated_at": c.updated_at.isoformat() if c.updated_at else None,
    }


def _message_out(m: Message, rating: int | None) -> dict[str, Any]:
    return {
        "id": m.id,
        "role": m.role,
        "content": m.content,
        "status": m.status,
        "citations": m.citations or [],
        "meta": m.meta or {},
        "rating": rating,
        "created_at": m.created_at.isoformat() if m.created_at else None,
    }
