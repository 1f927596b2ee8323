"""The pure parts of delivery: choosing a content coding, matching If-None-Match."""

from __future__ import annotations

import pytest

from dtecho.server.compression import choose_encoding
from dtecho.server.conditional import entity_tag, matches


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("GZIP, Zstd", "zstd"),  # equal q: the server's preference
        ("gzip, deflate, br, zstd", "zstd"),
        ("zstd;q=0.2, gzip;q=0.8", "gzip"),
        ("zstd;q=0, gzip;q=0", None),
        ("gzip;q=0", None),
        ("*", "zstd"),
        ("*;q=0", None),
        ("*;q=0.3, zstd;q=0", "gzip"),
        ("identity;q=0.9, gzip;q=0.5", None),
        ("identity;q=0.5, gzip", "gzip"),
        ("identity;q=0", None),  # nothing else acceptable: identity all the same
        ("br, deflate", None),
        ("gzip;q=nan", None),
        ("gzip;q=oops, zstd", "zstd"),
        ("gzip;level=9", "gzip"),
        ("", None),
        (" , ;q=1", None),
    ],
)
def test_choose_encoding_follows_rfc_9110(header: str, expected: str | None) -> None:
    assert choose_encoding(header) == expected


def test_only_offered_codings_are_chosen() -> None:
    assert choose_encoding("zstd, gzip;q=0.1", ("gzip",)) == "gzip"
    assert choose_encoding("zstd", ("gzip",)) is None


TAG = entity_tag(b"the body")


def test_entity_tags_are_strong_quoted_hashes_of_the_bytes() -> None:
    assert TAG.startswith(b'"') and TAG.endswith(b'"') and len(TAG) == 34
    assert entity_tag(b"the body") == TAG != entity_tag(b"the body!")


@pytest.mark.parametrize(
    ("header", "form"),
    [
        (TAG, TAG),
        (b"W/" + TAG, b"W/" + TAG),
        (b"*", TAG),
        (b' "a", ' + TAG + b' , "b"', TAG),
        (b'"a",W/' + TAG, b"W/" + TAG),
        (b'"a,b", ' + TAG, TAG),  # a comma inside a tag is not a separator
    ],
)
def test_if_none_match_uses_the_weak_comparison(header: bytes, form: bytes) -> None:
    assert matches(header, TAG) == form


@pytest.mark.parametrize("header", [b'"other"', b"", TAG[1:-1], b'"a" junk ' + TAG, b"W/"])
def test_other_or_malformed_validators_do_not_match(header: bytes) -> None:
    assert matches(header, TAG) is None
