"""The model list and health endpoints."""

import httpx
import openai

from tests.e2e.conftest import EMBED, PAINTER, QWEN, SKETCH, SMALL, Spec


def test_list_models_matches_the_spec(client: openai.OpenAI, http: httpx.Client, spec: Spec) -> None:
    payload = http.get("/v1/models").json()
    spec.validate("ListModelsResponse", payload)
    assert {m.id for m in client.models.list()} == {SMALL, QWEN, SKETCH, PAINTER, EMBED}
    kinds = {m["id"]: m["type"] for m in payload["data"]}
    assert kinds == {SMALL: "chat", QWEN: "chat", SKETCH: "chat", PAINTER: "chat", EMBED: "embedding"}


def test_retrieve_a_model_by_name_or_alias(client: openai.OpenAI, http: httpx.Client, spec: Spec) -> None:
    spec.validate("Model", http.get(f"/v1/models/{QWEN}").json())
    assert client.models.retrieve("small").id == SMALL


def test_unknown_model_is_404(http: httpx.Client, spec: Spec) -> None:
    response = http.get("/v1/models/nope")
    assert response.status_code == 404
    spec.validate("ErrorResponse", response.json())
    assert response.json()["error"]["code"] == "model_not_found"


def test_healthz_needs_no_key_and_reports_engine_load_to_the_operator(http: httpx.Client) -> None:
    response = httpx.get(str(http.base_url) + "/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}  # terse to anyone
    models = http.get("/healthz").json()["models"]  # with the master key
    assert set(models) == {SMALL, QWEN, SKETCH, PAINTER, EMBED}
    assert models[SMALL]["instances"] == 2
