from tests.openapi_schemas import assert_valid


def test_list_models_shows_ids_and_aliases(client):
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert_valid(body, "ListModelsResponse")
    ids = [m["id"] for m in body["data"]]
    assert ids[:5] == ["all-minilm-l6-v2", "minilm-matryoshka", "tiny-gemma", "tiny-llama-256", "tiny-llama"]  # ids first, in config-file order
    assert {"gpt-4", "gpt-4o-mini", "text-embedding-3-small"} <= set(ids)


def test_retrieve_model_by_id_and_alias(client):
    for name in ("tiny-llama", "gpt-4"):
        response = client.get(f"/v1/models/{name}")
        assert response.status_code == 200
        assert_valid(response.json(), "Model")
        assert response.json()["id"] == name


def test_retrieve_unknown_model_is_404(client):
    response = client.get("/v1/models/nope")
    assert response.status_code == 404
    assert_valid(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == "model_not_found"


def test_sdk_lists_models(openai_client):
    assert "gpt-4" in [m.id for m in openai_client.models.list()]
    assert openai_client.models.retrieve("tiny-gemma").id == "tiny-gemma"


def test_health_is_ok(client):
    assert client.get("/health").json() == {"status": "ok"}


def test_retrieve_model_reports_engine_and_device_in_the_ozwell_extension(client, openai_client):
    body = client.get("/v1/models/gpt-4").json()
    assert_valid(body, "Model")  # OpenAI's Model schema allows the extra property
    details = body["ozwell"]
    assert details["model"] == "tiny-llama"
    assert (details["task"], details["engine"], details["device"], details["requested_device"]) == (
        "chat", "transformers", "cpu", "cpu")
    assert details["max_model_len"] == 128
    assert len(details["revision"]) == 12
    embedding = client.get("/v1/models/text-embedding-3-small").json()["ozwell"]
    assert (embedding["task"], embedding["engine"], embedding["device"]) == ("embedding", "sentence-transformers",
                                                                            "cpu")
    assert openai_client.models.retrieve("tiny-gemma").model_extra["ozwell"]["device"] == "cpu"


def test_a_model_default_max_tokens_bounds_a_request_that_sets_none(client):
    """Issue #39: the README's first request (no max_tokens) ran 949 tokens for 398 s on a CPU. A config's
    default_max_tokens (Ollama's num_predict) now bounds such a request, and /v1/models shows it."""
    assert client.get("/v1/models/tiny-short").json()["ozwell"]["default_max_tokens"] == 6
    assert "default_max_tokens" not in client.get("/v1/models/tiny-llama").json()["ozwell"]
    ask = {"model": "tiny-short", "messages": [{"role": "user", "content": "Hello!"}], "temperature": 1.0}
    for seed in range(4):
        body = client.post("/v1/chat/completions", json={**ask, "seed": seed}).json()
        used, reason = body["usage"]["completion_tokens"], body["choices"][0]["finish_reason"]
        assert used <= 6 and (used == 6) == (reason == "length"), body
    responses = client.post("/v1/responses", json={"model": "tiny-short", "input": "Hi", "temperature": 1.0}).json()
    assert responses["usage"]["output_tokens"] <= 6
    # a request's own max_tokens wins over the default, either way
    longer = client.post("/v1/chat/completions", json={**ask, "seed": 1, "max_tokens": 40}).json()
    assert longer["usage"]["completion_tokens"] > 6 or longer["choices"][0]["finish_reason"] == "stop"
    shorter = client.post("/v1/chat/completions", json={**ask, "seed": 1, "max_tokens": 2}).json()
    assert shorter["usage"]["completion_tokens"] <= 2
    # legacy completions keep OpenAI's 16 when max_tokens is left out; an explicit null takes the model's default
    null = client.post("/v1/completions", json={"model": "tiny-short", "prompt": "Hi", "max_tokens": None,
                                               "seed": 2}).json()
    assert null["usage"]["completion_tokens"] <= 6
