from pathlib import Path

import pytest
from pydantic import ValidationError

from chatgate import ranges
from chatgate.config import DEFAULT_CATALOGUE, Settings, effective_catalogue, load_catalogue, load_settings
from chatgate.errors import ConfigError, InvalidRequest

DEFAULT_MODELS = [
    "qwen2.5-coder-0.5b-instruct",
    "qwen2.5-coder-0.5b-browsing",
    "qwen2.5-coder-0.5b-sketch",
    "all-minilm-l6-v2",
]


def test_production_refuses_to_start_without_a_strong_master_key() -> None:
    with pytest.raises(ValidationError, match="CHATGATE_API_KEY"):
        Settings(env="production")
    with pytest.raises(ValidationError):
        Settings(env="production", api_key="short")
    assert Settings(env="production", api_key="x" * 32).api_key is not None


def test_production_defaults_are_the_safe_ones() -> None:
    production = Settings(env="production", api_key="x" * 32)
    assert production.signup_mode == "invite"
    assert production.fail_closed and production.cookies_secure
    development = Settings()
    assert development.signup_mode == "open"
    assert not development.fail_closed and not development.cookies_secure
    assert (development.signups_per_hour, development.default_concurrency) == (5, 16)
    chosen = Settings(
        env="production", api_key="x" * 32, signup="open", limits_fail_closed=False, secure_cookies=False
    )
    assert chosen.signup_mode == "open" and not chosen.fail_closed and not chosen.cookies_secure


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "CHATGATE_DEFAULT_TPM",
            "100000000000",
            "CHATGATE_DEFAULT_TPM must be a whole number from 1 to 2,000,000,000",
        ),
        ("CHATGATE_FREE_CREDITS", "-1", "CHATGATE_FREE_CREDITS must be a whole number from 0 to"),
        ("CHATGATE_DEFAULT_RPM", "lots", "CHATGATE_DEFAULT_RPM: Input should be a valid integer"),
        ("CHATGATE_SIGNUP", "maybe", "CHATGATE_SIGNUP: Input should be 'open', 'invite' or 'closed'"),
        ("CHATGATE_TRUSTED_PROXIES", "10.0.0.0/8, proxy", "CHATGATE_TRUSTED_PROXIES holds something"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_one_range_says_the_same_wherever_it_is_checked() -> None:
    with pytest.raises(InvalidRequest) as refused:
        ranges.TPM.check(100_000_000_000, "tpm_limit")
    assert refused.value.param == "tpm_limit"
    assert (
        str(refused.value)
        == "tpm_limit must be a whole number from 1 to 2,000,000,000 (got 100,000,000,000)."
    )
    assert not ranges.TPM.contains(True) and not ranges.CREDITS.contains(-1)
    assert ranges.TPM.high < 2**31 and ranges.GRANT.high < 2**53  # fits the column, exact in JavaScript


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATGATE_PORT", "9001")
    monkeypatch.setenv("CHATGATE_MAX_QUEUE", "3")
    settings = Settings()
    assert (settings.port, settings.max_queue) == (9001, 3)


def test_the_default_catalogue_loads() -> None:
    names = [entry.name for entry in load_catalogue(DEFAULT_CATALOGUE).models]
    assert names == DEFAULT_MODELS


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


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ("  - {name: e, deployment: {kind: local_embedding}}\n", "exactly one"),
        (
            "  - name: e\n    deployments:\n      - {kind: local_embedding, asset: x}\n      - {asset: y}\n",
            "mixes embedding deployments with chat",
        ),
        (
            "  - {name: e, deployment: {kind: openai_embeddings, base_url: 'http://h/v1', model: m}}\n"
            "  - {name: b, deployment: {kind: browsing, base: e, search: {backend: local_index}}}\n",
            "an embedding model, not a chat model",
        ),
    ],
)
def test_embedding_models_are_checked(tmp_path: Path, models: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("models:\n" + models)
    with pytest.raises(ConfigError, match=message):
        load_catalogue(path)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ("{Content-Length: '5'}", "may not set 'Content-Length'"),
        ("{connection: close}", "may not set 'connection'"),
        ("{'x-a': \"1\\r\\nx-b: 2\"}", "not a header that can be sent"),
        ("{'bad name': v}", "not a header that can be sent"),
    ],
)
def test_an_upstreams_headers_are_ones_the_relay_can_send(tmp_path: Path, headers: str, message: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n  - {name: a, deployment: {kind: openai_compatible, base_url: 'http://h/v1', model: m, "
        f"headers: {headers}}}}}\n"
    )
    with pytest.raises(ConfigError, match=message):
        load_catalogue(path)


def test_unreadable_and_malformed_catalogues_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalogue(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_catalogue(bad)


def test_openai_key_and_no_catalogue_means_openais_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatgate.config import UpstreamDeployment, effective_catalogue

    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    catalogue = effective_catalogue(Settings())
    names = {entry.name for entry in catalogue.models}
    assert {"gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "text-embedding-ada-002"} <= names
    small = catalogue.entry("text-embedding-3-small")
    assert small is not None and small.price.prompt == 20_000 and small.embeddings[0].matryoshka
    deployment = catalogue.models[0].all_deployments[0]
    assert isinstance(deployment, UpstreamDeployment) and deployment.base_url == "http://127.0.0.1:9/v1"
    assert deployment.api_key() == "sk-upstream"
    monkeypatch.delenv("OPENAI_API_KEY")
    assert [entry.name for entry in effective_catalogue(Settings()).models] == DEFAULT_MODELS


def test_several_deployments_per_model(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n"
        "  - name: m\n"
        "    deployments:\n"
        "      - {kind: openai_compatible, base_url: 'http://a/v1', model: x, weight: 3}\n"
        "      - {asset: smollm2-135m-instruct-q4_1}\n"
    )
    entry = load_catalogue(path).models[0]
    assert [d.weight for d in entry.all_deployments] == [3, 1]
    path.write_text("models:\n  - {name: m}\n")
    with pytest.raises(ConfigError, match="either one"):
        load_catalogue(path)


BROWSING = """
models:
  - name: base
    aliases: [b]
    deployment: {kind: local, asset: smollm2-135m-instruct-q4_1}
  - name: base-browsing
    deployment: {kind: browsing, base: b, search: {backend: searxng, base_url: "http://127.0.0.1:8888"}}
  - name: base-notes
    deployment: {kind: browsing, base: base, search: {backend: local_index}}
"""


def test_browsing_models_name_a_base_and_a_search_backend(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BROWSING)
    catalogue = load_catalogue(path)
    derived = catalogue.models[1].derived
    assert derived is not None and derived.base == "b" and derived.search.backend == "searxng"
    assert catalogue.models[2].derived is not None and catalogue.models[0].derived is None
    for broken in (
        BROWSING.replace("base: b,", "base: nowhere,"),  # no such base
        BROWSING.replace("base: base,", "base: base-browsing,"),  # built on a derived model
        BROWSING.replace("backend: local_index", "backend: bing"),  # no such backend
    ):
        path.write_text(broken)
        with pytest.raises(ConfigError):
            load_catalogue(path)


def test_allow_hosts_and_index_path_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHATGATE_BROWSING_ALLOW_HOSTS", " 127.0.0.1, wiki.internal ,")
    monkeypatch.setenv("CHATGATE_DATA_DIR", "/srv/chatgate")
    settings = Settings()
    assert settings.allowed_hosts == ["127.0.0.1", "wiki.internal"]
    assert settings.index_path == Path("/srv/chatgate/index.db")


def test_openais_browsing_models_come_with_a_search_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    monkeypatch.setenv("CHATGATE_DATA_DIR", str(tmp_path))
    names = [m.name for m in effective_catalogue(Settings()).models]
    assert "gpt-4o-browsing" not in names  # nothing to search
    monkeypatch.setenv("CHATGATE_BROWSING_SEARXNG_URL", "http://127.0.0.1:8888")
    catalogue = effective_catalogue(Settings())
    entry = catalogue.entry("gpt-4-browsing")
    assert entry is not None and entry.name == "gpt-4o-browsing"
    assert entry.derived is not None and entry.derived.base == "gpt-4o"
    assert catalogue.entry("gpt-3.5-browsing") is not None


def test_openais_catalogue_sees_images_and_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    from chatgate.config import ImageGenerationDeployment, UpstreamDeployment

    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    catalogue = effective_catalogue(Settings())
    chat = catalogue.models[0].all_deployments[0]
    assert isinstance(chat, UpstreamDeployment) and chat.vision
    vision = catalogue.entry("gpt-4-vision-preview")  # the name older documents call
    assert vision is not None and vision.name == "gpt-4o"
    drawing = catalogue.entry("gpt-4o-image")
    assert drawing is not None and isinstance(drawing.derived, ImageGenerationDeployment)
    assert drawing.derived.base == "gpt-4o" and drawing.derived.backend.backend == "openai_images"


def test_a_drawing_model_needs_a_base_in_the_catalogue(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text(
        "models:\n"
        "  - name: painter\n"
        "    deployment: {kind: image_generation, base: nowhere, backend: {backend: sketch}}\n"
    )
    with pytest.raises(ConfigError, match="'nowhere'"):
        load_catalogue(path)
    path.write_text(
        "models:\n"
        "  - {name: m, deployment: {kind: local, asset: x}}\n"
        "  - name: painter\n"
        "    deployment: {kind: image_generation, base: m, backend: {backend: sketch}, sizes: [huge]}\n"
    )
    with pytest.raises(ConfigError, match="sizes"):
        load_catalogue(path)


def test_a_local_deployment_cannot_claim_vision(tmp_path: Path) -> None:
    path = tmp_path / "catalogue.yaml"
    path.write_text("models:\n  - {name: m, deployment: {kind: local, asset: x, vision: true}}\n")
    with pytest.raises(ConfigError, match="--mmproj"):
        load_catalogue(path)


def test_the_default_body_limit_is_what_the_largest_allowed_request_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = Settings()
    # every image of a request together (20 MB) as base64 data URLs, and 4 MiB of text
    assert settings.body_limit == 26_666_668 + 4 * 2**20 == 30_860_972
    monkeypatch.setenv("CHATGATE_IMAGE_REQUEST_BYTES", "3000000")
    assert Settings().body_limit == 4_000_000 + 4 * 2**20
    monkeypatch.setenv("CHATGATE_MAX_BODY_BYTES", "2048")
    assert Settings().body_limit == 2048


def test_one_worker_in_development_one_per_cpu_in_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHATGATE_WORKERS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert Settings().worker_count == 1
    assert Settings(env="production", api_key="x" * 32).worker_count == 6
    assert Settings(env="production", api_key="x" * 32, workers=2).worker_count == 2
    monkeypatch.setenv("CHATGATE_WORKERS", "3")
    assert Settings().worker_count == 3
    with pytest.raises(ValidationError, match="workers"):
        Settings(workers=0)
