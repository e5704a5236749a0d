"""Reading a server-sent-event stream from the test client."""

import json


def read_sse(client, path: str, body: dict) -> list:
    """POST and return the decoded `data:` payloads; the final [DONE] is kept as the string."""
    events = []
    with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                continue
            assert line.startswith("data: "), line
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events
