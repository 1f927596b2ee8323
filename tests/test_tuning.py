"""``dtecho tune``, run as a real subprocess on generated CSV files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dtecho.dtesn import DTESN


def run_tune(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DTECHO_", "DTESN_"))}
    return subprocess.run(
        [sys.executable, "-m", "dtecho", "tune", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def write_csv(path: Path, rows: int = 600) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(rows + 1) * 0.2
    u = np.sin(t) + 0.3 * np.sin(2.3 * t)
    noise = np.random.default_rng(0).normal(size=rows)
    with open(path, "w") as handle:
        handle.write("step,noise,u,y\n")
        for i in range(rows):
            handle.write(f"{i},{float(noise[i])!r},{float(u[i])!r},{float(u[i + 1])!r}\n")
    return u[:rows, None], u[1 : rows + 1, None]


def test_tune_prints_the_table_and_saves_a_model_that_predicts(tmp_path: Path) -> None:
    data, out = tmp_path / "data.csv", tmp_path / "model.npz"
    X, Y = write_csv(data)
    result = run_tune(str(data), "--target", "y", "--columns", "u", "--trials", "4",
                      "--units", "20", "--seed", "1", "--trees", "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["trial", "state", "score"]
    assert sorted(int(line.split()[0]) for line in lines[1:5]) == [0, 1, 2, 3]
    assert lines[6].startswith("best nrmse ")
    params = json.loads(lines[7])
    assert params["units"] == 20
    assert "tuning" in result.stderr  # the progress bar (or a line per trial)
    model = DTESN.load(out)
    assert model.units == 20 and model.n_features_in_ == 1
    # the next value of a smooth signal: a tuned reservoir gets it far below its spread
    error = model.predict(X)[100:] - Y[100:]
    assert np.sqrt(np.mean(error**2)) < 0.2 * Y.std()


def _one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dtecho tune: "), result.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--target", "z"], ["'z'", "columns: step, noise, u, y"]),
        (["--target", "y", "--columns", "u", "w"], ["'w'"]),
        (["--target", "y", "--folds", "0"], ["folds"]),
        (["--target", "y", "--warmup", "595"], ["warmup"]),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, args, words) -> None:
    data = tmp_path / "data.csv"
    write_csv(data)
    _one_line_error(run_tune(str(data), *args, "--trials", "1", "--units", "10"), *words)


def test_a_non_numeric_cell_is_named(tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("u,y\n1,2\n3,oops\n")
    _one_line_error(run_tune(str(data), "--target", "y"), "line 3", "'y'", "'oops'")


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    _one_line_error(run_tune(str(tmp_path / "none.csv"), "--target", "y"), "none.csv")
