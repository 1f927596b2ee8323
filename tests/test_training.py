"""The training corpus, its split and the ``train-lm`` entry point."""

from __future__ import annotations

import argparse
import io
import json

import numpy as np
import pytest

from dtecho.corpus import split, stdlib_docstrings
from dtecho.dtesn.lm import EchoLanguageModel
from dtecho.training import ProgressBar, add_train_lm_arguments, run_train_lm, train_echo_lm


def test_stdlib_docstrings_are_deterministic_and_substantial():
    a, b = stdlib_docstrings(300_000), stdlib_docstrings(300_000)
    assert a == b and len(a) == 300_000
    assert b"\x00" not in a
    assert b"Return" in a and a.count(b"\n\n") > 1000
    a.decode("utf-8", errors="strict")[:1000]  # the start is clean UTF-8 text


def test_stdlib_docstrings_prefix_is_stable_under_truncation():
    assert stdlib_docstrings(5_000) == stdlib_docstrings(50_000)[:5_000]


def test_stdlib_docstrings_read_a_given_directory_in_sorted_order(tmp_path):
    (tmp_path / "b.py").write_text('"""Second module."""\n')
    (tmp_path / "a.py").write_text('"""First."""\ndef f():\n    """Inner."""\n')
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "c.py").write_text('"""Skipped."""\n')
    (tmp_path / "bad.py").write_text("def (:\n")  # does not parse: skipped
    assert stdlib_docstrings(stdlib=tmp_path) == b"First.\n\nInner.\n\nSecond module.\n\n"


def test_split_gives_contiguous_non_overlapping_blocks():
    data = bytes(range(100))
    train, val, test = split(data, (0.8, 0.1, 0.1))
    assert (len(train), len(val), len(test)) == (80, 10, 10)
    assert train + val + test == data
    with pytest.raises(ValueError):
        split(data, (0.8, 0.3))


def test_progress_bar_draws_on_its_stream():
    out = io.StringIO()
    bar = ProgressBar("training", stream=out, width=10)
    bar(0.5)
    bar(0.5)  # unchanged: not redrawn
    bar(1.0)
    text = out.getvalue()
    assert text.count("\r") == 2 and "[#####-----]" in text and text.endswith("\n")


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    words = [b"echo ", b"tree ", b"state ", b"network ", b"deep "]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_bytes(b"".join(words[i] for i in rng.integers(0, len(words), 6000)))
    return path


def test_train_echo_lm_trains_evaluates_and_saves(small_corpus, tmp_path):
    seen: list[float] = []
    meta = train_echo_lm(small_corpus, tmp_path, units=32, seed=0, progress=seen.append)
    assert seen[-1] == 1.0 and seen == sorted(seen)
    assert meta["bits_per_byte"] < meta["bigram_bits_per_byte"] < meta["unigram_bits_per_byte"]
    assert meta["corpus"] == "file corpus.txt" and meta["units"] == 32
    saved = json.loads((tmp_path / "config.json").read_text())["metadata"]
    assert saved == meta
    model = EchoLanguageModel.load(tmp_path)
    assert model.bits_per_byte(b"deep echo state network ") < 3.0


def test_run_train_lm_parses_its_arguments(small_corpus, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_train_lm_arguments(parser)
    args = parser.parse_args(["--corpus", str(small_corpus), "--out", str(tmp_path / "m"),
                              "--units", "24", "--max-bytes", "20000"])  # fmt: skip
    assert run_train_lm(args) == 0
    assert "held-out bits/byte" in capsys.readouterr().out
    assert EchoLanguageModel.load(tmp_path / "m").metadata["corpus_bytes"] == 20000


def test_run_train_lm_reports_a_missing_corpus(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_train_lm_arguments(parser)
    args = parser.parse_args(["--corpus", str(tmp_path / "nope.txt"), "--out", str(tmp_path)])
    assert run_train_lm(args) == 1
    assert "nope.txt" in capsys.readouterr().err
