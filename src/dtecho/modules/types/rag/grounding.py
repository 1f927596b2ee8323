"""The grounded chat request: numbered context passages in a system message, and the
citations that say which passage each number is."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dtecho.modules.types.rag.index import Hit

__all__ = ["citations", "context_block", "grounded_messages", "last_user_text"]

NO_CONTEXT = "(no passages were found for this question)"


def last_user_text(messages: Sequence[Any]) -> str | None:
    """The text of the last user message (what retrieval searches for), or None."""
    for message in reversed(messages):
        if message.role == "user":
            text: str = message.text()
            return text
    return None


def context_block(hits: Sequence[Hit]) -> str:
    """``[1] Title\\npassage`` for each hit, blank lines between."""
    if not hits:
        return NO_CONTEXT
    passages = []
    for number, hit in enumerate(hits, start=1):
        title = hit.chunk.title or hit.chunk.document_id
        passages.append(f"[{number}] {title}\n{hit.chunk.text}")
    return "\n\n".join(passages)


def grounded_messages(
    messages: Sequence[dict[str, Any]], hits: Sequence[Hit], template: str
) -> list[dict[str, Any]]:
    """The client's messages after a system message holding the passages (``template``
    with ``{context}`` replaced; replaced, not ``str.format``, so braces in a template or a
    passage are text)."""
    system = {"role": "system", "content": template.replace("{context}", context_block(hits))}
    return [system, *messages]


def citations(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """What each passage number of the prompt stands for."""
    return [
        {
            "index": number,
            "document_id": hit.chunk.document_id,
            "title": hit.chunk.title,
            "chunk_index": hit.chunk.chunk_index,
            "score": round(hit.score, 6),
            "text": hit.chunk.text,
        }
        for number, hit in enumerate(hits, start=1)
    ]
