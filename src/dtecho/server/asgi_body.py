"""Reading a request body in an ASGI middleware and handing it on to the app."""

from __future__ import annotations

from starlette.types import Message, Receive

__all__ = ["raising", "read_body", "replay"]


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; ``None`` if the client left before sending it all."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the app the body already read, then the real messages."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def raising(exc: Exception) -> Receive:
    """A ``receive`` that raises what reading the body raised, inside the app's handlers."""

    async def receive() -> Message:
        raise exc

    return receive
