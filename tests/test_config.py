"""Settings precedence, validation messages and redaction."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dtecho.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("DTECHO_", "DTESN_CACHE_")):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "dtecho.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_defaults_need_no_file_and_no_services() -> None:
    settings = load_settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)
    assert settings.max_request_bytes == 10 * 1024 * 1024
    assert settings.redis_url is None and settings.cache_redis_url is None


def test_file_then_seed_names_then_dtecho_env(tmp_path: Path, monkeypatch) -> None:
    path = write_config(
        tmp_path, {"port": 9001, "cache": {"strategy": "conservative", "max_memory_entries": 7}}
    )
    assert load_settings(path).port == 9001
    assert load_settings(path).cache.strategy == "conservative"

    monkeypatch.setenv("DTESN_CACHE_STRATEGY", "dynamic")
    monkeypatch.setenv("DTESN_CACHE_ENABLED", "false")
    settings = load_settings(path)
    assert settings.cache.strategy == "dynamic"
    assert settings.cache.enabled is False
    assert settings.cache.max_memory_entries == 7  # untouched keys of the file survive the merge

    monkeypatch.setenv("DTECHO_CACHE__STRATEGY", "aggressive")
    monkeypatch.setenv("DTECHO_PORT", "9002")
    settings = load_settings(path)
    assert settings.cache.strategy == "aggressive"
    assert settings.port == 9002
    assert load_settings(path, port=9003).port == 9003  # command-line overrides win


def test_every_flat_environment_name_reaches_its_setting(monkeypatch) -> None:
    names = {
        "DTESN_CACHE_ENABLED": ("false", ("cache", "enabled"), False),
        "DTESN_CACHE_STRATEGY": ("dynamic", ("cache", "strategy"), "dynamic"),
        "DTESN_CACHE_MAX_MEMORY_ENTRIES": ("11", ("cache", "max_memory_entries"), 11),
        "DTESN_CACHE_MAX_COMPRESSED_ENTRIES": ("12", ("cache", "max_compressed_entries"), 12),
        "DTESN_CACHE_DEFAULT_TTL_SECONDS": ("13.5", ("cache", "default_ttl_seconds"), 13.5),
        "DTESN_CACHE_REDIS_URL": ("redis://r:1/2", ("cache", "redis_url"), "redis://r:1/2"),
        "DTESN_CACHE_COMPRESSION_ENABLED": ("false", ("cache", "compression_enabled"), False),
        "DTESN_CACHE_COMPRESSION_THRESHOLD": ("14", ("cache", "compression_threshold"), 14),
        "DTECHO_CACHE_NAMESPACE": ("tenant-a", ("cache", "namespace"), "tenant-a"),
        "DTECHO_BATCHING_ENABLED": ("false", ("batching", "enabled"), False),
        "DTECHO_BATCHING_MAX_SIZE": ("15", ("batching", "max_size"), 15),
        "DTECHO_BATCHING_MAX_WAIT_MS": ("16", ("batching", "max_wait_ms"), 16.0),
        "DTECHO_BATCHING_QUEUE_SIZE": ("17", ("batching", "queue_size"), 17),
        "DTECHO_BATCHING_PARALLEL": ("3", ("batching", "parallel"), 3),
    }
    for name, (value, _, _) in names.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    for name, (_, (section, field), expected) in names.items():
        assert getattr(getattr(settings, section), field) == expected, name


def test_config_file_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DTECHO_CONFIG_FILE", str(write_config(tmp_path, {"workers": 3})))
    assert load_settings().workers == 3


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DTECHO_PORT": "70000"}, "invalid setting port: Input should be less than or equal"),
        ({"DTESN_CACHE_MAX_MEMORY_ENTRIES": "0"}, "invalid setting cache.max_memory_entries"),
        ({"DTECHO_CACHE__STRATEGY": "reckless"}, "invalid setting cache.strategy"),
        ({"DTECHO_REDIS_URL": "http://x"}, "invalid setting redis_url"),
    ],
)
def test_invalid_environment_names_field(monkeypatch, env: dict, expected: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(expected)
    assert "\n" not in str(info.value)


def test_unknown_key_in_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^invalid setting cache\.colour: unknown setting$"):
        load_settings(write_config(tmp_path, {"cache": {"colour": "blue"}}))


def test_malformed_yaml_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("port: 1\ncache: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        load_settings(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No such file"):
        load_settings(tmp_path / "absent.yaml")


def test_redacted_hides_passwords_and_never_echoes_bad_urls(monkeypatch) -> None:
    monkeypatch.setenv("DTECHO_REDIS_URL", "redis://user:s3cret@cache:6379/0")
    monkeypatch.setenv("DTESN_CACHE_REDIS_URL", "redis://:other-s3cret@cache:6379/1")
    data = load_settings().redacted()
    assert data["redis_url"] == "redis://user:***@cache:6379/0"
    assert data["cache"]["redis_url"] == "redis://:***@cache:6379/1"
    assert "s3cret" not in str(data)
    monkeypatch.setenv("DTECHO_REDIS_URL", "http://user:s3cret@cache")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "s3cret" not in str(info.value)
