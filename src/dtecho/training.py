"""Train, evaluate and save an echo language model (``dtecho train-lm``).

The packaged default model in ``src/dtecho/data/echo_lm/`` was produced on Python 3.11.7,
from the repository root, by the equivalent of ``dtecho train-lm --out src/dtecho/data/echo_lm``
(before that subcommand was wired into the CLI, literally)::

    python -c "import argparse, sys; from dtecho.training import *; \
    p = argparse.ArgumentParser(); add_train_lm_arguments(p); \
    sys.exit(run_train_lm(p.parse_args(['--out', 'src/dtecho/data/echo_lm'])))"

i.e. ``train_echo_lm(None, Path("src/dtecho/data/echo_lm"))`` with the defaults below: the
standard library's docstrings (``dtecho.corpus.stdlib_docstrings``), cut into contiguous
blocks — 90 % training text (of which ``EchoLanguageModel`` keeps its last 5 % apart to fit
the softmax temperature), 5 % unused and 5 % held-out test text on which ``bits_per_byte``,
``bigram_bits_per_byte`` and ``unigram_bits_per_byte`` in ``config.json``'s metadata were
measured (with the training time). The corpus depends on the Python version, so another
interpreter gives a slightly different (equally valid) model.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from dtecho import corpus as corpora
from dtecho.dtesn.lm import EchoLanguageModel

__all__ = ["ProgressBar", "add_train_lm_arguments", "run_train_lm", "train_echo_lm"]

DEFAULT_UNITS = 1200
DEFAULT_SEED = 0
SPLIT = (0.9, 0.05, 0.05)  # train, spare, test: contiguous blocks of the corpus, in order


class ProgressBar:
    """A one-line text progress bar (``[#####-----]  50%  12s``) redrawn on ``stream``."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30) -> None:
        self.label, self.width = label, width
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()
        self._last = -1

    def __call__(self, fraction: float) -> None:
        """Show ``fraction`` (0…1) done; redraws only when the bar visibly changes."""
        f = min(1.0, max(0.0, float(fraction)))
        step = int(f * 200)
        if step == self._last:
            return
        self._last = step
        filled = int(f * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = time.monotonic() - self.started
        self.stream.write(f"\r{self.label} [{bar}] {f:4.0%} {elapsed:5.0f}s")
        if f >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def train_echo_lm(
    corpus_path: Path | None,
    out_dir: Path,
    *,
    units: int = DEFAULT_UNITS,
    seed: int = DEFAULT_SEED,
    max_bytes: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> dict[str, Any]:
    """Train on a text file (``None``: the stdlib docstrings), evaluate, save to ``out_dir``.

    The corpus (at most ``max_bytes`` of it) is split by ``SPLIT`` into contiguous blocks;
    the model is trained on the first and evaluated on the last, as is a bigram byte model
    trained on the same text. Returns the model's metadata (also written to
    ``out_dir/config.json``).
    """
    if corpus_path is None:
        text = corpora.stdlib_docstrings(max_bytes)
        description = corpora.describe_stdlib_corpus()
    else:
        text = Path(corpus_path).read_bytes()
        text = text if max_bytes is None else text[:max_bytes]
        description = f"file {Path(corpus_path).name}"
    train, _, test = corpora.split(text, SPLIT)
    if len(train) < 1024 or len(test) < 2:
        raise ValueError(f"the corpus is too small to train on ({len(text)} bytes)")
    model = EchoLanguageModel(units=units, seed=seed)
    model.fit(train, heldout=test, progress=progress)
    model.metadata.update(
        corpus=description,
        corpus_bytes=len(text),
        split=list(SPLIT),
        python=platform.python_version(),
        reproduce=f"dtecho train-lm{'' if corpus_path is None else ' --corpus ' + str(corpus_path)}"
        f" --out DIR --units {units} --seed {seed}"
        + ("" if max_bytes is None else f" --max-bytes {max_bytes}"),
    )
    model.save(out_dir)
    return dict(model.metadata)


def add_train_lm_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``dtecho train-lm``."""
    parser.add_argument(
        "--corpus", type=Path, metavar="PATH",
        help="UTF-8 text file (default: docstrings of Python's standard library)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR",
        help="directory to write config.json and weights.npz to",
    )  # fmt: skip
    parser.add_argument("--units", type=int, default=DEFAULT_UNITS, help="reservoir units")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--max-bytes", type=int, metavar="N", help="use at most N corpus bytes")


def run_train_lm(args: argparse.Namespace) -> int:
    """Run ``dtecho train-lm``; prints the held-out figures; returns the exit status."""
    try:
        meta = train_echo_lm(
            args.corpus, args.out, units=args.units, seed=args.seed,
            max_bytes=args.max_bytes, progress=ProgressBar("training"),
        )  # fmt: skip
    except (OSError, ValueError) as exc:
        print(f"dtecho train-lm: {exc}", file=sys.stderr)
        return 1
    print(
        f"held-out bits/byte: model {meta['bits_per_byte']:.3f}, bigram "
        f"{meta['bigram_bits_per_byte']:.3f}, unigram {meta['unigram_bits_per_byte']:.3f} "
        f"({meta['heldout_bytes']} bytes); trained in {meta['training_seconds']} s; "
        f"saved to {args.out}"
    )
    return 0
