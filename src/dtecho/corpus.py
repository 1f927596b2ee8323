"""Training text every machine has offline: docstrings of Python's own standard library.

No third-party text is committed to this repository. The default echo language model is
trained on ``stdlib_docstrings()``, which reads the running interpreter's standard library
at training time:

- every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]``, in sorted order of its
  POSIX path relative to that directory (so ``asyncio/base_events.py`` comes before
  ``asyncio/events.py``, and the order never depends on the file system);
- skipping directories named ``test``, ``tests``, ``idlelib``, ``site-packages``,
  ``dist-packages`` and ``__pycache__`` (test data contains deliberately malformed files,
  and installed third-party packages are not the standard library);
- each file parsed with ``ast`` (files that do not parse or decode are skipped); the
  docstrings of the module, then of every class and function in ``ast.walk`` order
  (breadth first), as returned by ``ast.get_docstring`` (cleaned: indentation removed);
- each docstring encoded as UTF-8 and followed by a blank line (``b"\\n\\n"``).

The result is a deterministic function of the Python installation (record its version next
to anything trained on it): two calls return the same bytes.
"""

from __future__ import annotations

import ast
import itertools
import os
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["describe_stdlib_corpus", "split", "stdlib_docstrings"]

SKIPPED_DIRS = frozenset(
    {"test", "tests", "idlelib", "site-packages", "dist-packages", "__pycache__"}
)
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _stdlib_files(root: Path) -> list[Path]:
    """The stdlib's ``*.py`` files outside skipped directories, sorted by relative path."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath, name)
                found.append((path.relative_to(root).as_posix(), path))
    return [path for _, path in sorted(found)]


def _docstrings(source: bytes) -> Iterator[str]:
    """Module, class and function docstrings of one source file, in ``ast.walk`` order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node, clean=True)
            if doc and doc.strip():
                yield doc


def stdlib_docstrings(max_bytes: int | None = None, *, stdlib: str | Path | None = None) -> bytes:
    """The standard library's docstrings as one UTF-8 byte string (see the module docstring).

    ``max_bytes`` truncates the result to at most that many bytes (reading stops as soon as
    enough text is collected). ``stdlib`` overrides the directory that is read.
    """
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    root = Path(stdlib if stdlib is not None else sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"standard library directory not found: {root}")
    parts: list[bytes] = []
    size = 0
    for path in _stdlib_files(root):
        if max_bytes is not None and size >= max_bytes:
            break
        try:
            source = path.read_bytes()
        except OSError:
            continue
        for doc in _docstrings(source):
            # surrogateescape keeps undecodable text from breaking the run; stdlib is UTF-8.
            piece = doc.encode("utf-8", "surrogateescape") + b"\n\n"
            parts.append(piece)
            size += len(piece)
    text = b"".join(parts)
    return text if max_bytes is None else text[:max_bytes]


def describe_stdlib_corpus() -> str:
    """One line naming the corpus and the interpreter it came from (for model metadata)."""
    import platform

    return (
        f"docstrings of the Python {platform.python_version()} standard library "
        f"(dtecho.corpus.stdlib_docstrings)"
    )


def split(corpus: bytes, fractions: Sequence[float] = (0.9, 0.05, 0.05)) -> tuple[bytes, ...]:
    """Contiguous blocks of ``corpus`` in order, one per fraction (e.g. train, validation, test).

    Fractions must be positive and sum to at most 1 (a remainder is dropped from the end).
    Block i spans bytes [⌊c_{i−1}·n⌋, ⌊c_i·n⌋) with c the cumulative fractions, so the blocks
    never overlap and the later (held-out) blocks are text the earlier ones never saw.
    """
    if not fractions or any(f <= 0 for f in fractions) or sum(fractions) > 1 + 1e-12:
        raise ValueError(f"fractions must be positive and sum to <= 1, got {tuple(fractions)}")
    n = len(corpus)
    edges = [0]
    total = 0.0
    for f in fractions:
        total += f
        edges.append(min(n, int(total * n + 1e-9)))
    return tuple(corpus[a:b] for a, b in itertools.pairwise(edges))
