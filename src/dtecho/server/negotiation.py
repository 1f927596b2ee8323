"""Content negotiation: one resource, four representations chosen by ``Accept``.

``application/json`` (the default), ``text/html`` (a server-rendered Jinja2 page),
``application/xml`` and ``application/msgpack``. q-values are honoured, ``q=0`` excludes a
type, wildcards match, the most specific matching range decides a type's q (RFC 9110 §12.5.1).
Nothing acceptable is a 406 in the OpenAI error body. Every negotiated response says
``Vary: Accept`` so caches keep the representations apart.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import msgpack
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from dtecho.errors import NotAcceptable

__all__ = ["OFFERED", "negotiate", "parse_accept", "render", "render_encoded", "to_xml"]

JSON, HTML, XML, MSGPACK = "application/json", "text/html", "application/xml", "application/msgpack"
OFFERED = (JSON, HTML, XML, MSGPACK)
_ALIASES = {"application/x-msgpack": MSGPACK, "text/xml": XML}


def parse_accept(header: str) -> list[tuple[str, float]]:
    """``Accept`` as (media range, q) pairs; malformed parts are skipped, q clamped to [0, 1]."""
    ranges = []
    for part in header.split(","):
        fields = [field.strip() for field in part.split(";")]
        media = fields[0].lower()
        if "/" not in media:
            continue
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0
                if math.isnan(q):
                    q = 0.0
        ranges.append((_ALIASES.get(media, media), q))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    kind = offer.split("/")[0]
    best_specificity, quality = -1, 0.0
    for media, q in ranges:
        if media == offer:
            specificity = 2
        elif media == f"{kind}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        if specificity > best_specificity:
            best_specificity, quality = specificity, q
    return quality


def negotiate(accept: str | None, offered: tuple[str, ...] = OFFERED) -> str:
    """The offered type the client prefers; ties go to the earlier offer (JSON first)."""
    if not accept or not accept.strip():
        return offered[0]
    ranges = parse_accept(accept)
    if not ranges:
        return offered[0]
    scored = [(_quality(offer, ranges), -index, offer) for index, offer in enumerate(offered)]
    quality, _, offer = max(scored)
    if quality <= 0:
        raise NotAcceptable(
            f"None of {', '.join(offered)} is acceptable to 'Accept: {accept}'.",
            param="Accept",
        )
    return offer


def _xml_name(key: str) -> str | None:
    valid = key and (key[0].isalpha() or key[0] == "_") and key.isascii()
    valid = valid and all(ch.isalnum() or ch in "_-." for ch in key)
    return key if valid and not key.lower().startswith("xml") else None


def _fill(element: ET.Element, value: Any) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            name = _xml_name(str(key))
            child = ET.SubElement(element, name or "entry")
            if name is None:
                child.set("key", str(key))
            _fill(child, item)
    elif isinstance(value, list | tuple):
        for item in value:
            _fill(ET.SubElement(element, "item"), item)
    elif value is None:
        element.set("nil", "true")
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    else:
        element.text = str(value)


def to_xml(data: Any, root: str = "response") -> bytes:
    """Well-formed XML: mappings become elements (``<entry key=…>`` for keys that are not
    XML names), sequences ``<item>`` children, ``null`` an empty element with ``nil="true"``."""
    element = ET.Element(root)
    _fill(element, data)
    return ET.tostring(element, encoding="utf-8", xml_declaration=True)


def render(
    request: Request,
    data: Any,
    *,
    page: Callable[[], str] | None = None,
    status_code: int = 200,
    root: str = "response",
) -> Response:
    """Answer ``data`` in the representation the client prefers. ``page`` renders the HTML
    representation; resources without one do not offer HTML."""
    offered = OFFERED if page is not None else (JSON, XML, MSGPACK)
    chosen = negotiate(request.headers.get("accept"), offered)
    headers = {"vary": "Accept"}
    if chosen == HTML:
        assert page is not None
        return HTMLResponse(page(), status_code=status_code, headers=headers)
    if chosen == XML:
        return Response(to_xml(data, root), status_code, headers, media_type=XML)
    if chosen == MSGPACK:
        return Response(msgpack.packb(data), status_code, headers, media_type=MSGPACK)
    return JSONResponse(data, status_code, headers)


def render_encoded(
    request: Request,
    encoded: bytes,
    *,
    page: Callable[[Any], str] | None = None,
    root: str = "response",
    headers: dict[str, str] | None = None,
    chosen: str | None = None,
) -> Response:
    """:func:`render` for data already encoded as JSON (a cached result): JSON clients get
    the bytes as they are, other representations decode them first. ``page`` receives the
    decoded data; ``headers`` are added to the response. ``chosen``: what :func:`negotiate`
    already picked for this request among the same offers, if it was asked before."""
    extra = headers or {}
    offered = OFFERED if page is not None else (JSON, XML, MSGPACK)
    if chosen is None:
        chosen = negotiate(request.headers.get("accept"), offered)
    if chosen == JSON:
        return Response(encoded, 200, {"vary": "Accept", **extra}, media_type=JSON)
    data = json.loads(encoded)
    response = render(request, data, page=(lambda: page(data)) if page else None, root=root)
    response.headers.update(extra)
    return response
