"""The limits package is a library: it imports nothing of the web stack."""

from __future__ import annotations

import subprocess
import sys


def test_importing_limits_pulls_in_no_web_stack() -> None:
    code = (
        "import sys, dtecho.limits\n"
        "bad = sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('fastapi', 'starlette', 'uvicorn')\n"
        "             or m.startswith('dtecho.server'))\n"
        "print(' '.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == ""
