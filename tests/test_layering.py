"""Nothing below ``dtecho.server`` imports it: importing every other package of dtecho loads
no module of the server package."""

import json
import pkgutil
import subprocess
import sys

import dtecho

BELOW_SERVER = sorted(
    f"dtecho.{m.name}"
    for m in pkgutil.iter_modules(dtecho.__path__)
    if m.name not in {"server", "cli", "__main__"}
)


def test_no_package_below_the_server_imports_it() -> None:
    assert "dtecho.services" in BELOW_SERVER and "dtecho.protocol" in BELOW_SERVER
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"for name in {BELOW_SERVER!r}:\n"
        "    package = importlib.import_module(name)\n"
        "    for m in pkgutil.walk_packages(getattr(package, '__path__', []), name + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('dtecho.server'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
