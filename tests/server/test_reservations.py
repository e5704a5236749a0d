"""A request without max_tokens reserves its prompt and the server's completion reserve (256 tokens a choice),
not its whole context, and is charged what it really used when it ends; a refusal caused only by the
reservations of requests still running says to retry shortly, not after the window's minute (issue #17: a
LangChain batch of 3 on a free key got two 429s with Retry-After: 60). The model has a 1,024-token context and
the key 1,000 tokens a minute, the ratio of an 8,192-token model on the free plan's 10,000."""

import asyncio

import httpx

ENUM = {"type": "json_schema", "json_schema": {"name": "c", "strict": True, "schema": {
    "type": "object", "properties": {"c": {"enum": ["x", "y"]}}, "required": ["c"], "additionalProperties": False}}}


def _key(client, tpm: int) -> str:
    _, key = client.app.state.services.keys.create(name=f"reserve-{tpm}", plan="free", rpm=20, tpm=tpm)
    return key


def _concurrent(client, key: str, count: int) -> list[httpx.Response]:
    """`count` chats at once, without max_tokens (short answers: a grammar ends them after a few tokens)."""
    async def main():
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     headers={"Authorization": f"Bearer {key}"}) as http:
            return await asyncio.gather(*(http.post("/v1/chat/completions", json={
                "model": "tiny-tools", "messages": [{"role": "user", "content": f"Pick one, {i}."}],
                "temperature": 1.0, "seed": i, "response_format": ENUM}) for i in range(count)))
    return asyncio.run(main())


def test_three_concurrent_chats_without_max_tokens_fit_a_small_tpm(tools_client):
    responses = _concurrent(tools_client, _key(tools_client, 1000), 3)
    assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
    used = [r.json()["usage"] for r in responses]
    # each held its prompt + 256 while it ran (3 x ~270 fit 1,000; 3 whole contexts, 3,072, would not)
    assert all(u["prompt_tokens"] + 256 < 1000 / 3 for u in used)
    remaining = int(responses[-1].headers["x-ratelimit-remaining-tokens"])
    assert remaining >= 1000 - sum(u["prompt_tokens"] + 256 for u in used)


def test_a_refusal_behind_running_requests_says_retry_shortly(tools_client):
    responses = _concurrent(tools_client, _key(tools_client, 600), 3)  # room for two reservations, not three
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 429], [r.text for r in responses]
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["type"] == "tokens"
    assert refused.headers["Retry-After"] == "2"  # the running ones refund within moments, not in a minute
    # and once they have ended, the same request goes through
    assert _concurrent(tools_client, refused.request.headers["Authorization"][7:], 1)[0].status_code == 200


def test_a_full_window_of_settled_use_still_waits_for_the_window(tools_client):
    key = _key(tools_client, 300)
    first = _concurrent(tools_client, key, 1)[0]
    assert first.status_code == 200
    # fill the window with settled use: what remains is less than another request's reservation
    second = _concurrent(tools_client, key, 1)[0]
    assert second.status_code == 429
    assert int(second.headers["Retry-After"]) > 2
