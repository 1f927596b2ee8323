"""dtecho.observability sits below the server: importing it pulls in no web stack."""

from __future__ import annotations

import json
import subprocess
import sys

WEB = ["fastapi", "starlette", "uvicorn", "dtecho.server"]
MODULES = ["buckets", "cli", "exposition", "history", "llm", "metrics", "runtime", "slo"]


def test_observability_imports_no_web_packages() -> None:
    code = (
        "import json, sys\n"
        + "".join(f"import dtecho.observability.{name}\n" for name in MODULES)
        + f"print(json.dumps([m for m in {WEB!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
