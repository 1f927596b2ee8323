"""A document's text from what was uploaded: plain text, Markdown (kept as text) or PDF.

Errors are :class:`~dtecho.errors.InvalidRequest` (or 415) naming the request field, so the
client learns which part of its upload was wrong.
"""

from __future__ import annotations

import codecs
import io
import logging
import re

from dtecho.errors import InvalidRequest

__all__ = [
    "MEDIA_TYPES",
    "UnsupportedMediaType",
    "media_type_of",
    "normalise_text",
    "pdf_text",
    "text_of",
]

# What the module reads, by media type; the extension is the fallback for a part sent as
# application/octet-stream (curl -F file=@notes.md does that).
MEDIA_TYPES = {
    "text/plain": "text/plain",
    "text/markdown": "text/markdown",
    "text/x-markdown": "text/markdown",
    "application/pdf": "application/pdf",
}
_EXTENSIONS = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".pdf": "application/pdf",
}
_GENERIC = {"", "application/octet-stream", "binary/octet-stream"}
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class UnsupportedMediaType(InvalidRequest):
    """An upload of a media type the module does not read (415)."""

    status_code = 415
    default_code = "unsupported_media_type"


def _parameters(content_type: str) -> tuple[str, dict[str, str]]:
    kind, _, rest = content_type.partition(";")
    params = {}
    for item in rest.split(";"):
        name, _, value = item.partition("=")
        if name.strip():
            params[name.strip().lower()] = value.strip().strip('"')
    return kind.strip().lower(), params


def media_type_of(content_type: str | None, filename: str | None, param: str = "file") -> str:
    """The media type the module reads an upload as (a key's value of :data:`MEDIA_TYPES`);
    415 naming ``param`` for any other."""
    kind, _ = _parameters(content_type or "")
    if kind in MEDIA_TYPES:
        return MEDIA_TYPES[kind]
    if kind in _GENERIC and filename:
        extension = "." + filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
        if extension in _EXTENSIONS:
            return _EXTENSIONS[extension]
    shown = kind or "none"
    raise UnsupportedMediaType(
        f"The file's media type ({shown}) is not supported; upload text/plain, text/markdown "
        "or application/pdf.",
        param=param,
    )


def normalise_text(text: str) -> str:
    """Unix newlines, no control characters but tabs and newlines, no byte-order mark."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text)


def text_of(data: bytes, content_type: str | None, param: str = "file") -> str:
    """Decode a text upload: the charset its content type names, else UTF-8."""
    _, params = _parameters(content_type or "")
    charset = params.get("charset", "utf-8")
    try:
        codecs.lookup(charset)
    except LookupError:
        raise InvalidRequest(f"Unknown charset '{charset}'.", param=param) from None
    try:
        return data.decode(charset)
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"The file is not valid {charset} text (byte {exc.start}); send UTF-8 or name the "
            "charset in the part's content type.",
            param=param,
        ) from None


def pdf_text(data: bytes, param: str = "file") -> str:
    """The text of a PDF, page after page (blank line between pages). Runs pypdf; call it
    in a worker thread, a large PDF takes a while."""
    from pypdf import PdfReader

    # pypdf logs every oddity of a damaged file as a warning: the client gets our answer.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidRequest("The PDF is encrypted with a password.", param=param)
        pages = [page.extract_text() or "" for page in reader.pages]
    except InvalidRequest:
        raise
    except Exception as exc:
        # Untrusted input to a third-party parser: whatever it raises (PdfReadError, but also
        # KeyError, struct.error, RecursionError … on damaged files) means "not readable".
        raise InvalidRequest(
            f"The file is not a readable PDF ({type(exc).__name__}).", param=param
        ) from None
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        raise InvalidRequest(
            "No text could be extracted from the PDF (a scanned PDF needs OCR first).",
            param=param,
        )
    return text
