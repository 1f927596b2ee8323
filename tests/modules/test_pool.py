"""The module pool: lazy single start, LRU and idle eviction, health checks, hot swap after
the requests in flight, failures isolated with backoff. Module types defined here are
plug-ins of the public interface (``dtecho.modules.base.Module``), as a third party's are."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, ConfigDict

from dtecho.config import ModulesSettings
from dtecho.modules.base import Module, ModuleContext, ModuleServices
from dtecho.modules.catalog import ManifestCatalog
from dtecho.modules.manifest import ManifestInvalid, parse_manifest
from dtecho.modules.pool import ModulePool, ModuleUnavailable

EVENTS: list[tuple[str, str]] = []


class CounterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = "a"
    fail_start: bool = False


class CounterModule(Module):
    Config: ClassVar[type[BaseModel]] = CounterConfig
    healthy = True

    async def start(self) -> None:
        await asyncio.sleep(0.01)  # concurrent first requests overlap here
        if self.config.fail_start:  # type: ignore[attr-defined]
            raise RuntimeError("no database")
        EVENTS.append(("start", self.context.module))

    async def check(self) -> None:
        if not CounterModule.healthy:
            raise RuntimeError("sick")

    async def close(self) -> None:
        EVENTS.append(("close", self.context.module))


def _context(project: str, spec: Any) -> ModuleContext:
    services = ModuleServices(models=lambda: None, settings=lambda: None)
    return ModuleContext(project, spec.name, spec.version, Path("/nonexistent"), {}, services)


def _entry(catalog: ManifestCatalog, *modules: dict[str, Any], project: str = "p") -> Any:
    manifest = parse_manifest(
        {"schema_version": 1, "project": project, "modules": list(modules)}, "t"
    )
    return catalog.validate(manifest, "test")


@pytest.fixture
def setup() -> tuple[ManifestCatalog, ModulePool]:
    EVENTS.clear()
    CounterModule.healthy = True
    types = {"counter": CounterModule}
    catalog = ManifestCatalog(types)
    settings = ModulesSettings(pool_size=2, idle_seconds=3600, retry_backoff_seconds=0.05)
    pool = ModulePool(types, _context, settings)
    catalog.on_change(pool.on_catalog_change)
    return catalog, pool


async def test_concurrent_first_requests_share_one_start(setup: Any) -> None:
    catalog, pool = setup
    entry = _entry(catalog, {"name": "m", "type": "counter"})

    async def use() -> int:
        async with pool.lease(entry, entry.manifest.modules[0]) as instance:
            return id(instance)

    ids = await asyncio.gather(*(use() for _ in range(10)))
    assert len(set(ids)) == 1
    assert EVENTS == [("start", "m")]
    await pool.close()
    assert EVENTS == [("start", "m"), ("close", "m")]


async def test_least_recently_used_is_evicted_beyond_pool_size(setup: Any) -> None:
    catalog, pool = setup
    entry = _entry(catalog, *({"name": n, "type": "counter"} for n in ("a", "b", "c")))
    specs = {m.name: m for m in entry.manifest.modules}
    for name in ("a", "b", "a", "c"):  # b is the least recently used when c arrives
        async with pool.lease(entry, specs[name]):
            pass
    await asyncio.sleep(0.05)
    assert ("close", "b") in EVENTS and ("close", "a") not in EVENTS
    assert sorted(s["module"] for s in pool.status()) == ["a", "c"]
    assert pool.counts[("counter", "evicted_lru")] == 1
    await pool.close()


async def test_idle_instances_are_closed(setup: Any) -> None:
    catalog, pool = setup
    pool.settings = ModulesSettings(idle_seconds=0.01)
    entry = _entry(catalog, {"name": "m", "type": "counter"})
    async with pool.lease(entry, entry.manifest.modules[0]):
        pass
    await asyncio.sleep(0.05)
    await pool.check_now()
    await asyncio.sleep(0.01)
    assert EVENTS == [("start", "m"), ("close", "m")]
    assert pool.status() == []


async def test_a_failed_check_restarts_the_module_after_the_backoff(setup: Any) -> None:
    catalog, pool = setup
    entry = _entry(catalog, {"name": "m", "type": "counter"})
    spec = entry.manifest.modules[0]
    async with pool.lease(entry, spec) as first:
        pass
    CounterModule.healthy = False
    await pool.check_now()
    with pytest.raises(ModuleUnavailable) as refused:
        async with pool.lease(entry, spec):
            pass
    assert refused.value.status_code == 503
    assert "health check failed" in refused.value.message
    assert int(refused.value.headers["retry-after"]) >= 1
    CounterModule.healthy = True
    await asyncio.sleep(0.06)  # past the backoff
    async with pool.lease(entry, spec) as second:
        assert second is not first
    assert EVENTS.count(("start", "m")) == 2 and ("close", "m") in EVENTS
    await pool.close()


async def test_a_start_failure_is_retried_with_doubling_backoff(setup: Any) -> None:
    catalog, pool = setup
    entry = _entry(catalog, {"name": "m", "type": "counter", "config": {"fail_start": True}})
    spec = entry.manifest.modules[0]
    for _ in range(2):
        with pytest.raises(ModuleUnavailable, match="no database"):
            async with pool.lease(entry, spec):
                pass
        # Within the backoff the start is not tried again.
        with pytest.raises(ModuleUnavailable):
            async with pool.lease(entry, spec):
                pass
        await asyncio.sleep(0.11)
    assert pool.counts[("counter", "start_failed")] == 2
    assert pool.status()[0]["failures"] == 2
    await pool.close()


async def test_a_changed_manifest_swaps_after_the_request_in_flight(setup: Any) -> None:
    catalog, pool = setup
    old_entry = _entry(catalog, {"name": "m", "type": "counter", "config": {"label": "old"}})
    catalog.replace_source("dir", {"p": old_entry})
    release = asyncio.Event()
    seen: list[str] = []

    async def slow_request() -> None:
        async with pool.lease(old_entry, old_entry.manifest.modules[0]) as instance:
            await release.wait()
            seen.append(instance.config.label)  # type: ignore[attr-defined]

    task = asyncio.create_task(slow_request())
    await asyncio.sleep(0.05)
    new_entry = _entry(catalog, {"name": "m", "type": "counter", "config": {"label": "new"}})
    catalog.replace_source("dir", {"p": new_entry})
    async with pool.lease(new_entry, new_entry.manifest.modules[0]) as instance:
        seen.append(instance.config.label)  # type: ignore[attr-defined]
    assert ("close", "m") not in EVENTS  # the old one still serves its request
    release.set()
    await task
    await asyncio.sleep(0.01)
    assert seen == ["new", "old"]
    assert EVENTS.count(("close", "m")) == 1
    await pool.close()


def test_manifest_errors_name_their_fields() -> None:
    catalog = ManifestCatalog({"counter": CounterModule})
    bad = {
        "schema_version": 1,
        "project": "v1",
        "modules": [{"name": "Bad Name", "type": "counter"}],
        "colour": "red",
    }
    with pytest.raises(ManifestInvalid) as invalid:
        parse_manifest(bad, "x.yaml")
    errors = invalid.value.errors
    assert any(e.startswith("project:") and "plain API" in e for e in errors)
    assert any(e.startswith("modules[0].name:") for e in errors)
    assert any(e.startswith("colour:") for e in errors)
    with pytest.raises(ManifestInvalid, match="schema_version"):
        parse_manifest({"schema_version": 2, "project": "p", "modules": []}, "x")
    with pytest.raises(ManifestInvalid, match="must be a reference"):
        parse_manifest(
            {
                "schema_version": 1,
                "project": "p",
                "modules": [{"name": "m", "type": "counter", "secrets": {"k": "sk-live-123"}}],
            },
            "x",
        )
    manifest = parse_manifest(
        "schema_version: 1\nproject: p\nmodules:\n  - {name: m, type: counter, config: {x: 1}}\n",
        "p.yaml",
    )
    with pytest.raises(ManifestInvalid) as config_error:
        catalog.validate(manifest, "p.yaml")
    assert config_error.value.errors == ["modules[0].config.x: Extra inputs are not permitted"]
    with pytest.raises(ManifestInvalid, match="not valid JSON or YAML"):
        parse_manifest("{not json", "p.json")
