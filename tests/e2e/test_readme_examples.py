"""The README's examples run as written, against real servers.

Each Python block is taken from README.md itself (so an edit there is tested), with only
the server address and the placeholder key replaced by a test server's.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import ServerProcess, generated_client

pytestmark = pytest.mark.e2e

README = Path(__file__).parents[2] / "README.md"
ADMIN_KEY = "readme-admin-key-0123456789abcdef"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _block(language: str, marker: str) -> str:
    found = [block for block in _blocks(language) if marker in block]
    assert len(found) == 1, f"one {language} block with {marker!r} in the README"
    return found[0]


def _run(code: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in code, old
        code = code.replace(old, new)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    return out.getvalue()


def test_library_example() -> None:
    _run(_block("python", "from dtecho.dtesn import DTESN, datasets"), {})


def test_generated_client_example(server: ServerProcess, tmp_path: Path) -> None:
    generated_client(server.base_url, tmp_path)
    printed = _run(
        _block("python", "deep_tree_echo_client"),
        {"http://127.0.0.1:8000": server.base_url},
    )
    steps, units = printed.split(" ", 1)
    assert int(steps) == len(b"echo") and sum(json.loads(units)) == 64


def test_error_body_example(server: ServerProcess) -> None:
    shown = json.loads(_block("json", '"error"'))
    answer = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": "dtesn-echo", "messages": [{"role": "user", "content": "hi"}],
              "temperature": 3},
    )  # fmt: skip
    assert answer.status_code == 400 and answer.json() == shown


def test_auth_example(server_factory: Any) -> None:
    keyed_server = server_factory(
        {"auth": {"mode": "keys", "admin_key": "env:DTECHO_ADMIN_KEY"}},
        env={"DTECHO_ADMIN_KEY": ADMIN_KEY},
    )
    shell = _block("sh", "/admin/keys")
    body = re.search(r"-d '(\{.*?\})'", shell)
    assert body is not None
    created = httpx.post(
        f"{keyed_server.base_url}/admin/keys",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        json=json.loads(body.group(1)),
    )
    assert created.status_code == 201, created.text
    printed = _run(
        _block("python", "with_raw_response"),
        {"http://localhost:8000": keyed_server.base_url, "sk-dte-…": created.json()["key"]},
    )
    remaining_requests, remaining_tokens = (int(n) for n in printed.split())
    assert remaining_requests == 599  # rpm 600, one request made
    assert remaining_tokens < 100_000


def test_front_door_example(server_factory: Any, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    manifest = _block("yaml", "project: acme")
    (manifests / "acme.yaml").write_text(manifest, encoding="utf-8")
    keyed_server = server_factory(
        {
            "auth": {"mode": "keys", "admin_key": "env:DTECHO_ADMIN_KEY"},
            "modules": {"manifest_dir": str(manifests)},
        },
        env={"DTECHO_ADMIN_KEY": ADMIN_KEY},
    )
    created = httpx.post(
        f"{keyed_server.base_url}/admin/keys",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        json={"name": "acme-app", "project": "acme"},
    )
    assert created.status_code == 201, created.text
    printed = _run(
        _block("python", "acme/chat/v1"),
        {"http://localhost:8000": keyed_server.base_url, "sk-dte-…": created.json()["key"]},
    )
    assert printed.split("\n")[:2] == ["['fast']", "16"]


def test_lifecycle_walk_through(server: ServerProcess) -> None:
    guide = (README.parent / "docs" / "lifecycle.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", guide, re.S)
    printed = _run(code, {"http://localhost:8000": server.base_url})
    assert printed.strip() == "rolled_back"
