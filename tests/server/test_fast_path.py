"""The fast path's request aliases: a bounded LRU keyed by the exact request bytes."""

from __future__ import annotations

from dtecho.server.fast_path import RequestAliases, request_digest


def test_digest_depends_on_method_path_and_every_byte() -> None:
    base = request_digest("POST", "/v1/embeddings", b'{"input":"a"}')
    assert base == request_digest("POST", "/v1/embeddings", b'{"input":"a"}')
    assert base != request_digest("POST", "/v1/embeddings", b'{"input":"b"}')
    assert base != request_digest("POST", "/v1/embeddings", b'{"input": "a"}')
    assert base != request_digest("POST", "/v1/completions", b'{"input":"a"}')
    assert base != request_digest("PUT", "/v1/embeddings", b'{"input":"a"}')


def test_aliases_keep_the_most_recently_used() -> None:
    aliases = RequestAliases(max_entries=2)
    aliases.remember(b"a", "ns:v1:a", "json")
    aliases.remember(b"b", "ns:v1:b", "response")
    assert aliases.get(b"a") == ("ns:v1:a", "json")  # now a is the most recent
    aliases.remember(b"c", "ns:v1:c", "json")
    assert len(aliases) == 2
    assert aliases.get(b"b") is None
    assert aliases.get(b"a") == ("ns:v1:a", "json")
    assert aliases.get(b"c") == ("ns:v1:c", "json")
