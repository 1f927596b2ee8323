"""``dtecho tune``: search DTESN settings for a CSV time series (``dtecho.dtesn.search``).

The CSV has a header row; ``--target`` names the column(s) to predict, the inputs are
``--columns`` or every other column; the rows are one sequence in time order. Progress goes
to stderr (a tqdm bar where tqdm is installed, else a line per trial); the table of trials
(best first) and the best settings go to stdout; ``--out`` saves the fitted model
(``DTESN.save``). Bad input is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

__all__ = ["TuneInputError", "add_tune_arguments", "read_table", "run_tune"]


class TuneInputError(ValueError):
    """The CSV or the arguments cannot be used (reported as one line, exit status 2)."""


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="CSV file with a header row, one row per time step")
    parser.add_argument(
        "--target", required=True, action="append", metavar="COLUMN",
        help="column to predict (repeat for several)",
    )  # fmt: skip
    parser.add_argument(
        "--columns", nargs="+", metavar="COLUMN", help="input columns (default: all the others)"
    )
    parser.add_argument("--trials", type=int, default=50, help="configurations to try (50)")
    parser.add_argument("--seed", type=int, default=0, help="the search's seed (0)")
    parser.add_argument("--folds", type=int, default=3, help="validation folds (3)")
    parser.add_argument("--warmup", type=int, default=100, help="rows the readout skips (100)")
    parser.add_argument("--units", type=int, default=400, help="reservoir units (400)")
    parser.add_argument("--timeout", type=float, help="stop starting trials after SECONDS")
    parser.add_argument(
        "--trees", action="store_true", help="search the membrane tree too (TREE_SPACE)"
    )
    parser.add_argument("--out", metavar="FILE", help="save the fitted model (.npz)")


def read_table(path: str, targets: list[str], columns: list[str] | None) -> tuple[Any, Any]:
    """(inputs (T, d_in), targets (T, d_out)) from a CSV with a header row."""
    import numpy as np

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except OSError as exc:
        raise TuneInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TuneInputError(f"{path} is not a UTF-8 text file") from None
    rows = [row for row in rows if any(cell.strip() for cell in row)]
    if len(rows) < 2:
        raise TuneInputError(f"{path} needs a header row and at least one row of data")
    header = [name.strip() for name in rows[0]]
    inputs = columns if columns is not None else [c for c in header if c not in targets]
    for name in [*targets, *inputs]:
        if name not in header:
            raise TuneInputError(f"no column {name!r} in {path} (columns: {', '.join(header)})")
    if not inputs:
        raise TuneInputError("no input columns left: name them with --columns")
    if set(inputs) & set(targets):
        raise TuneInputError("a column cannot be both an input and a target")
    at = {name: i for i, name in enumerate(header)}
    values = np.empty((len(rows) - 1, len(header)))
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise TuneInputError(
                f"{path} line {line}: {len(row)} fields, the header has {len(header)}"
            )
        for name in [*targets, *inputs]:
            cell = row[at[name]].strip()
            try:
                values[line - 2, at[name]] = float(cell)
            except ValueError:
                raise TuneInputError(
                    f"{path} line {line}, column {name!r}: {cell!r} is not a number"
                ) from None
    used = values[:, [at[c] for c in [*inputs, *targets]]]
    if not np.all(np.isfinite(used)):
        raise TuneInputError(f"{path} holds NaN or infinite values")
    return values[:, [at[c] for c in inputs]], values[:, [at[c] for c in targets]]


def _progress(total: int) -> tuple[Any, Any]:
    """(callback, close) reporting each trial on stderr."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, desc="tuning", unit="trial", file=sys.stderr)

        def update(step: Any) -> None:
            bar.update(1)
            if step.best_score is not None:
                bar.set_postfix(best=f"{step.best_score:.4g}")

        return update, bar.close

    def line(step: Any) -> None:
        best = "-" if step.best_score is None else f"{step.best_score:.4g}"
        print(f"trial {step.done}/{step.total}: {step.row['state']}, best {best}", file=sys.stderr)

    return line, lambda: None


def run_tune(args: argparse.Namespace) -> int:
    """Run ``dtecho tune``; returns the exit status."""
    targets = list(dict.fromkeys(args.target))
    try:
        inputs, outputs = read_table(args.data, targets, args.columns)
    except TuneInputError as exc:
        print(f"dtecho tune: {exc}", file=sys.stderr)
        return 2
    from dtecho.dtesn.search import check_folds, search

    try:  # before the progress bar: a bad argument is then the only line on stderr
        if args.trials < 1:
            raise ValueError(f"--trials must be >= 1, got {args.trials}")
        check_folds(inputs, outputs, folds=args.folds, warmup=args.warmup)
    except ValueError as exc:
        print(f"dtecho tune: {exc}", file=sys.stderr)
        return 2
    update, close = _progress(args.trials)
    try:
        result = search(
            inputs, outputs, n_trials=args.trials, folds=args.folds, warmup=args.warmup,
            seed=args.seed, timeout=args.timeout, base={"units": args.units}, trees=args.trees,
            progress=update,
        )  # fmt: skip
    except ValueError as exc:
        close()
        print(f"dtecho tune: {exc}", file=sys.stderr)
        return 2
    close()
    print(result.table.to_text(sort=True))
    print()
    print(f"best {result.metric} {result.best_score:.6g} (mean of {result.folds} folds)")
    print(json.dumps(result.params, sort_keys=True))
    if args.out:
        assert result.model is not None
        result.model.save(args.out)
        print(f"saved {args.out}")
    return 0
