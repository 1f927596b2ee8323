"""The numerical core is a library: importing it pulls in nothing from the web stack."""

import json
import subprocess
import sys

WEB = ["fastapi", "starlette", "uvicorn", "httpx", "pydantic", "redis"]


def test_dtesn_imports_no_web_packages():
    code = (
        "import json, sys\n"
        "import dtecho.dtesn\n"
        "from dtecho.dtesn import DTESN, datasets, trees, bseries\n"
        f"print(json.dumps([m for m in {WEB!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
