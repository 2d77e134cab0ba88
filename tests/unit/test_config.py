from pathlib import Path

import pytest
from pydantic import ValidationError

from chatgate.config import DEFAULT_CATALOGUE, Settings, load_catalogue
from chatgate.errors import ConfigError


def test_production_refuses_to_start_without_a_strong_master_key() -> None:
    with pytest.raises(ValidationError, match="CHATGATE_API_KEY"):
        Settings(env="production")
    with pytest.raises(ValidationError):
        Settings(env="production", api_key="short")
    assert Settings(env="production", api_key="x" * 32).api_key is not None


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATGATE_PORT", "9001")
    monkeypatch.setenv("CHATGATE_MAX_QUEUE", "3")
    settings = Settings()
    assert (settings.port, settings.max_queue) == (9001, 3)


def test_the_default_catalogue_loads() -> None:
    names = [entry.name for entry in load_catalogue(DEFAULT_CATALOGUE).models]
    assert names == ["qwen2.5-coder-0.5b-instruct"]


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n"
        "  - {name: a, deployment: {asset: x}}\n"
        "  - {name: b, aliases: [a], deployment: {asset: y}}\n"
    )
    with pytest.raises(ConfigError, match="appears twice"):
        load_catalogue(path)


def test_a_local_deployment_needs_exactly_one_source(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  - {name: a, deployment: {asset: x, path: /m.gguf}}\n")
    with pytest.raises(ConfigError, match="exactly one"):
        load_catalogue(path)


def test_unreadable_and_malformed_catalogues_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalogue(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalogue(bad)
